//! GCE's rules between an instance's `scheduling` fields, checked on `instances.insert` with
//! GCE's 400 (`invalid`, "Invalid value for field 'resource.scheduling.F': …"), and the
//! defaults GCE fills in.

use serde_json::{json, Value};

use crate::links::int64;
use crate::reply::ApiError;

/// The shortest and longest `maxRunDuration` GCE takes: 30 seconds to 120 days
/// (https://cloud.google.com/compute/docs/instances/limit-vm-runtime, gcloud's
/// `--max-run-duration`).
pub(crate) const RUN_DURATION_SECONDS: std::ops::RangeInclusive<i64> = 30..=120 * 24 * 3600;

/// GCE's refusal of a field's value, naming the field as its 400s do.
fn refuse(field: &str, value: &Value, why: &str) -> ApiError {
    let value = match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    ApiError::invalid(format!(
        "Invalid value for field 'resource.scheduling.{field}': '{value}'. {why}"
    ))
}

/// The instance's `scheduling` as GCE stores it: `body`'s (which may be absent) checked and
/// completed with GCE's defaults. `gpus` says whether the instance has guest accelerators;
/// `refuse_time_limits` plays a project where GCE takes a termination action from Spot VMs
/// only (as it did before standard VMs could have a time limit).
pub(crate) fn check(
    body: Option<&Value>,
    gpus: bool,
    refuse_time_limits: bool,
) -> Result<Value, ApiError> {
    let given = body.cloned().unwrap_or_else(|| json!({}));
    let s = given
        .as_object()
        .ok_or_else(|| ApiError::invalid("Invalid value for field 'resource.scheduling'"))?;
    let model = s
        .get("provisioningModel")
        .and_then(Value::as_str)
        .unwrap_or("STANDARD");
    let spot = model == "SPOT" || s.get("preemptible") == Some(&Value::Bool(true));
    let enums: [(&str, &[&str]); 3] = [
        (
            "provisioningModel",
            &["STANDARD", "SPOT", "FLEX_START", "RESERVATION_BOUND"],
        ),
        ("onHostMaintenance", &["MIGRATE", "TERMINATE"]),
        ("instanceTerminationAction", &["STOP", "DELETE"]),
    ];
    for (field, allowed) in enums {
        if let Some(v) = s.get(field) {
            if !v.as_str().is_some_and(|v| allowed.contains(&v)) {
                return Err(refuse(field, v, "Value is not one of the allowed values."));
            }
        }
    }
    let action = s.get("instanceTerminationAction");
    let duration = s.get("maxRunDuration");
    let limited = duration.is_some() || s.contains_key("terminationTime");
    // limit-vm-runtime: a time limit is either a duration or a time, never both, and it
    // needs the action to take at the end.
    if duration.is_some() && s.contains_key("terminationTime") {
        return Err(refuse(
            "terminationTime",
            &s["terminationTime"],
            "Only one of maxRunDuration and terminationTime can be specified.",
        ));
    }
    if let Some(d) = duration {
        let seconds = int64(d.get("seconds"));
        if !seconds.is_some_and(|s| RUN_DURATION_SECONDS.contains(&s)) {
            return Err(refuse(
                "maxRunDuration.seconds",
                &d["seconds"],
                "Max run duration must be between 30 seconds and 120 days.",
            ));
        }
    }
    if limited && action.is_none() {
        return Err(ApiError::invalid(
            "Invalid value for field 'resource.scheduling.instanceTerminationAction': ''. \
             A termination action must be specified for a VM instance with a time limit.",
        ));
    }
    // A standard VM takes a termination action only with a time limit (GCE's own 400 for
    // one without, as tools have met it; limit-vm-runtime). `refuse_time_limits` also
    // refuses it with one.
    if let Some(a) = action {
        if model == "STANDARD" && !spot && (!limited || refuse_time_limits) {
            return Err(refuse(
                "instanceTerminationAction",
                a,
                "You cannot specify a termination action for a VM instance that has the \
                 standard provisioning model (default). To use instance termination action, \
                 the VM instance must use the Spot, Reservation-Bound or Flex Start \
                 provisioning model.",
            ));
        }
    }
    let maintenance = s.get("onHostMaintenance").and_then(Value::as_str);
    // Spot and preemptible VMs: TERMINATE is "the default and only possible behavior", and
    // they "cannot be automatically restarted" (the v1 discovery document's Scheduling).
    if spot {
        if maintenance == Some("MIGRATE") {
            return Err(refuse(
                "onHostMaintenance",
                &s["onHostMaintenance"],
                "Scheduling must have preemptible be false when OnHostMaintenance isn't TERMINATE.",
            ));
        }
        if s.get("automaticRestart") == Some(&Value::Bool(true)) {
            return Err(refuse(
                "automaticRestart",
                &s["automaticRestart"],
                "Scheduling must have preemptible be false when AutomaticRestart is true.",
            ));
        }
    }
    // A VM with a GPU cannot live-migrate: it must TERMINATE on host maintenance
    // (https://cloud.google.com/compute/docs/gpus, "Restrictions"). GCE defaults a new VM
    // to MIGRATE, so it must be given.
    if gpus && maintenance != Some("TERMINATE") {
        return Err(refuse(
            "onHostMaintenance",
            &json!(maintenance.unwrap_or("MIGRATE")),
            "Instances with guest accelerators do not support live migration.",
        ));
    }
    let mut out = json!({
        "onHostMaintenance": if spot { "TERMINATE" } else { "MIGRATE" },
        "automaticRestart": !spot,
        "preemptible": s.get("preemptible") == Some(&Value::Bool(true)),
        "provisioningModel": model,
    });
    for (k, v) in s {
        out[k] = v.clone();
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(s: Value, gpus: bool) -> String {
        let e = check(Some(&s), gpus, false).unwrap_err();
        assert_eq!((e.status, e.reason.as_str()), (400, "invalid"), "{e:?}");
        e.message
    }

    #[test]
    fn what_the_build_sends_is_taken_and_completed() {
        let s = json!({"onHostMaintenance": "MIGRATE", "provisioningModel": "STANDARD",
                       "instanceTerminationAction": "DELETE", "maxRunDuration": {"seconds": "11100"}});
        let out = check(Some(&s), false, false).unwrap();
        assert_eq!(out["automaticRestart"], true);
        assert_eq!(out["maxRunDuration"]["seconds"], "11100");
        let gpu = json!({"onHostMaintenance": "TERMINATE", "provisioningModel": "STANDARD"});
        assert!(check(Some(&gpu), true, false).is_ok());
        assert_eq!(
            check(None, false, false).unwrap()["onHostMaintenance"],
            "MIGRATE"
        );
        let spot = check(Some(&json!({"provisioningModel": "SPOT"})), false, false).unwrap();
        assert_eq!(
            (
                spot["onHostMaintenance"].as_str(),
                spot["automaticRestart"].as_bool()
            ),
            (Some("TERMINATE"), Some(false))
        );
    }

    #[test]
    fn each_rule_gives_gces_400() {
        let standard_action = refused(json!({"instanceTerminationAction": "DELETE"}), false);
        assert!(
            standard_action.contains("'resource.scheduling.instanceTerminationAction': 'DELETE'"),
            "{standard_action}"
        );
        assert!(
            refused(json!({"maxRunDuration": {"seconds": "600"}}), false)
                .contains("termination action must be specified")
        );
        for seconds in ["29", "10368001", "x"] {
            let s = json!({"instanceTerminationAction": "DELETE", "maxRunDuration": {"seconds": seconds}});
            assert!(refused(s, false).contains("maxRunDuration.seconds"));
        }
        let both = json!({"instanceTerminationAction": "STOP", "maxRunDuration": {"seconds": 60}, "terminationTime": "2030-01-01T00:00:00Z"});
        assert!(refused(both, false).contains("Only one of"));
        assert!(refused(
            json!({"provisioningModel": "SPOT", "onHostMaintenance": "MIGRATE"}),
            false
        )
        .contains("onHostMaintenance"));
        assert!(refused(
            json!({"preemptible": true, "automaticRestart": true}),
            false
        )
        .contains("automaticRestart"));
        assert!(refused(json!({}), true).contains("guest accelerators"));
        assert!(refused(json!({"provisioningModel": "CHEAP"}), false).contains("allowed values"));
    }

    #[test]
    fn a_project_refusing_time_limits_takes_the_vm_without_one() {
        let limited = json!({"provisioningModel": "STANDARD", "instanceTerminationAction": "DELETE",
                             "maxRunDuration": {"seconds": "600"}});
        let e = check(Some(&limited), false, true).unwrap_err();
        assert!(e.message.contains("standard provisioning model"), "{e:?}");
        assert!(check(Some(&json!({"provisioningModel": "STANDARD"})), false, true).is_ok());
    }
}
