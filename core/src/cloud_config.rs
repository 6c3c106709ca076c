//! The cloud-config that starts the provisioner on the build VM (upstream's `startup.yaml`).
//!
//! The same text goes to GCE as the `user-data` metadata key and onto the CIDATA disk for
//! cloud-init's NoCloud source. Both COS and the local fixture keep `/etc` and
//! `/var/lib/cloud` on tmpfs, so cloud-init applies it again on every boot and the service
//! below resumes the provisioner after each reboot it asks for.
//!
//! It is emitted as JSON after the `#cloud-config` line: JSON is valid YAML, and that
//! avoids a YAML emitter.

use serde_json::json;

use cos_customizer_common::protocol::{
    exit, ACK_METADATA_KEY, ACK_WAIT_SECS, CIDATA_LABEL, CIDATA_MOUNT, CONFIG_JSON, FAILURE_MARKER,
    PROVISIONER_PREFIX, STATE_DIR, STATUS_PREFIX, STATUS_TTY_AARCH64, STATUS_TTY_X86_64,
    SUCCESS_MARKER,
};

use crate::scratch;

/// The unit template; the instance is the escaped path of the tty it writes to.
pub const UNIT_NAME: &str = "customizer@.service";

/// The unit instance that writes to `tty` (systemd's escaping of a path: `/dev/ttyS2` is
/// `-dev-ttyS2`).
fn unit_instance(tty: &str) -> String {
    format!("customizer@{}.service", tty.replace('/', "-"))
}

/// Where cloud-init writes the startup script (tmpfs on COS, so it is rewritten each boot).
pub const STARTUP_SCRIPT_PATH: &str = "/tmp/startup.sh";

/// The script the service runs: mount CIDATA, run or resume the provisioner, then act on
/// its exit code (3 = reboot and resume).
pub fn startup_script() -> String {
    format!(
        r#"#!/bin/bash
# Runs the COS Customizer provisioner; started by {UNIT_NAME} on every boot.
set -o errexit -o pipefail -o nounset
set +o history

readonly CIDATA={mount}
readonly SCRATCH={scratch_mount}

# Any unexpected failure must still reach the preloader, or it waits for its timeout.
trap 'echo "{FAILURE_MARKER} startup script failed at line ${{LINENO}}"' ERR

# Prefixes every line so the preloader forwards it to the build log; sed is unbuffered
# so lines arrive as they are written.
status() {{
  "$@" 2>&1 | sed -u "s/^/{STATUS_PREFIX}/"
  return "${{PIPESTATUS[0]}}"
}}

case "$(uname -m)" in
  x86_64) ARCH=amd64 ;;
  aarch64) ARCH=arm64 ;;
  *)
    echo "{FAILURE_MARKER} unsupported architecture $(uname -m)"
    exit 1
    ;;
esac

# udev may not have created the label links yet when this unit starts.
for _ in $(seq 30); do
  [[ -e /dev/disk/by-label/{CIDATA_LABEL} ]] && break
  sleep 1
done
mkdir -p "${{CIDATA}}"
mountpoint -q "${{CIDATA}}" || mount -o ro /dev/disk/by-label/{CIDATA_LABEL} "${{CIDATA}}"

# Checked after the CIDATA wait, so the SCRATCH link has had the same time to appear.
if [[ -e /dev/disk/by-label/{scratch_label} ]]; then
  mkdir -p "${{SCRATCH}}"
  resize2fs -f /dev/disk/by-label/{scratch_label}
  mountpoint -q "${{SCRATCH}}" || mount /dev/disk/by-label/{scratch_label} "${{SCRATCH}}"
  mkdir -p "${{SCRATCH}}/gpu"
fi

# The original's unit waits for docker.service before it starts (about 27 s of a boot under
# TCG) though most builds never call docker. Where docker.socket exists, the first docker
# call starts the daemon and waits for it; only an image without it needs the daemon
# started here, as the original did, before a script can call it.
if ! systemctl cat docker.socket >/dev/null 2>&1; then
  systemctl start docker.service || echo "docker.service did not start; going on without it"
fi

provisioner="${{CIDATA}}/{PROVISIONER_PREFIX}${{ARCH}}"
if [[ ! -e {STATE_DIR} ]]; then
  args=(run "--config=${{CIDATA}}/{config}")
else
  args=(resume)
fi

rc=0
status "${{provisioner}}" "${{args[@]}}" || rc=$?

case "${{rc}}" in
  0)
    echo "{SUCCESS_MARKER} Build completed with no errors. Shutting down..."
    # Serial output is lost once the VM stops: wait until the preloader has read it.
    "${{provisioner}}" wait-metadata {ACK_METADATA_KEY} --timeout={ACK_WAIT_SECS} ||
      echo "no {ACK_METADATA_KEY} acknowledgement from the preloader; shutting down anyway"
    umount "${{CIDATA}}" || :
    umount "${{SCRATCH}}" || :
    shutdown -h now
    ;;
  {reboot})
    status echo "Rebooting..."
    sleep 1
    systemctl reboot
    # The reboot stops this unit; never fall through to anything else.
    while :; do sleep 3600; done
    ;;
  *)
    echo "{FAILURE_MARKER} exiting due to errors"
    # Safety net: the preloader normally stops the VM long before this.
    sleep 300
    shutdown -h now
    ;;
esac
"#,
        mount = CIDATA_MOUNT,
        scratch_mount = scratch::MOUNT,
        scratch_label = scratch::LABEL,
        config = CONFIG_JSON,
        reboot = exit::REBOOT,
    )
}

/// The systemd unit template that runs the startup script with its output on a serial tty.
pub fn unit_file() -> String {
    format!(
        "[Unit]
Description=Run the COS Customizer provisioner
Wants=network-online.target gcr-online.target docker.socket
After=network-online.target gcr-online.target docker.socket

[Service]
Type=oneshot
RemainAfterExit=yes
User=root
ExecStart=/bin/bash {STARTUP_SCRIPT_PATH}
ExecStopPost=/bin/bash -c 'rm /etc/systemd/system/{UNIT_NAME}'
StandardOutput=tty
StandardError=tty
TTYPath=%I
"
    )
}

/// The `user-data` for both GCE metadata and the NoCloud seed.
pub fn user_data() -> String {
    let start = format!(
        "if [ \"$(uname -m)\" = aarch64 ]; then unit={}; \
         else unit={}; fi; systemctl --no-block start \"$unit\"",
        unit_instance(STATUS_TTY_AARCH64),
        unit_instance(STATUS_TTY_X86_64),
    );
    let doc = json!({
        "write_files": [
            {
                "path": STARTUP_SCRIPT_PATH,
                "permissions": "0644",
                "content": startup_script(),
            },
            {
                "path": format!("/etc/systemd/system/{UNIT_NAME}"),
                "permissions": "0644",
                "content": unit_file(),
            },
        ],
        "runcmd": ["systemctl daemon-reload", start],
    });
    // Pretty output keeps a space after each `:`, which every YAML 1.1 parser accepts.
    let body = serde_json::to_string_pretty(&doc).expect("a JSON value always serializes");
    format!("#cloud-config\n{body}\n")
}

/// The NoCloud `meta-data`. cloud-init reruns per-instance modules when `instance_id` changes.
pub fn meta_data(instance_id: &str) -> String {
    format!("instance-id: {instance_id}\nlocal-hostname: preload-vm\n")
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::*;
    use cos_customizer_common::cmd;

    fn parsed() -> serde_json::Value {
        let text = user_data();
        let (first, rest) = text.split_once('\n').unwrap();
        assert_eq!(first, "#cloud-config");
        serde_json::from_str(rest).expect("user-data body is JSON")
    }

    #[test]
    fn user_data_is_json_after_the_header() {
        let v = parsed();
        assert_eq!(v["write_files"][0]["path"], "/tmp/startup.sh");
        assert_eq!(v["write_files"][0]["content"], startup_script());
        assert_eq!(
            v["write_files"][1]["path"],
            "/etc/systemd/system/customizer@.service"
        );
        assert_eq!(v["runcmd"][0], "systemctl daemon-reload");
        let start = v["runcmd"][1].as_str().unwrap();
        assert!(start.contains("customizer@-dev-ttyS2.service"), "{start}");
        assert!(start.contains("customizer@-dev-ttyAMA2.service"), "{start}");
        assert!(start.contains("systemctl --no-block start"), "{start}");
    }

    #[test]
    fn protocol_strings_are_pinned() {
        // The preloader and Daisy workflows match these exact strings on the serial port.
        let s = startup_script();
        assert!(s.contains(r#"sed -u "s/^/BuildStatus: /""#), "{s}");
        assert!(s.contains(
            r#"echo "BuildSucceeded: Build completed with no errors. Shutting down...""#
        ));
        assert!(s.contains(r#"echo "BuildFailed: exiting due to errors""#));
        assert!(s.contains("provisioner_${ARCH}\"\nif"));
        assert!(s.contains(r#"args=(run "--config=${CIDATA}/config.json")"#));
        assert!(s.contains(r#""${provisioner}" wait-metadata DaisyEnd --timeout=300"#));
        assert!(s.contains("readonly CIDATA=/mnt/disks/cidata\n"));
        assert!(s.contains("[[ ! -e /var/lib/.cos-customizer ]]"));
        assert!(s.contains("mount -o ro /dev/disk/by-label/CIDATA \"${CIDATA}\""));
        assert!(s.contains("readonly SCRATCH=/mnt/disks/scratch\n"));
        assert!(s.contains("resize2fs -f /dev/disk/by-label/SCRATCH\n"));
        assert!(s.contains("mount /dev/disk/by-label/SCRATCH \"${SCRATCH}\""));
        let unit = unit_file();
        for line in [
            "Type=oneshot",
            "RemainAfterExit=yes",
            "User=root",
            "ExecStart=/bin/bash /tmp/startup.sh",
            "ExecStopPost=/bin/bash -c 'rm /etc/systemd/system/customizer@.service'",
            "StandardOutput=tty",
            "StandardError=tty",
            "TTYPath=%I",
            "After=network-online.target gcr-online.target docker.socket",
        ] {
            assert!(
                unit.lines().any(|l| l == line),
                "missing {line:?} in\n{unit}"
            );
        }
    }

    #[test]
    fn startup_script_passes_bash_syntax_check() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("startup.sh");
        std::fs::write(&path, startup_script()).unwrap();
        cmd::run(Command::new("bash").arg("-n").arg(&path)).unwrap();
    }

    #[test]
    fn status_keeps_the_exit_code_and_prefixes_lines() {
        // The function as written in the script, run under the script's own shell options.
        let s = startup_script();
        let start = s.find("status() {").unwrap();
        let func = &s[start..start + s[start..].find("\n}\n").unwrap() + 3];
        let prog = format!(
            "set -o errexit -o pipefail -o nounset\n{func}rc=0\n\
             status sh -c 'echo one; echo two >&2; exit 3' || rc=$?\necho \"rc=$rc\""
        );
        let out = cmd::run_stdout(Command::new("bash").args(["-c", &prog])).unwrap();
        assert_eq!(out, "BuildStatus: one\nBuildStatus: two\nrc=3\n");
    }

    #[test]
    fn meta_data_names_the_instance() {
        assert_eq!(
            meta_data("build-1"),
            "instance-id: build-1\nlocal-hostname: preload-vm\n"
        );
    }
}
