//! Routes: the table of what the emulator serves, each one a method of Google's discovery
//! document, and the faults each can take.

use crate::faults::Fault;

/// Every route the emulator serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Route {
    /// `zoneOperations.get`.
    ZoneOperationGet,
    /// `zoneOperations.wait`.
    ZoneOperationWait,
    /// `globalOperations.get`.
    GlobalOperationGet,
    /// `globalOperations.wait`.
    GlobalOperationWait,
    /// `disks.insert`.
    DiskInsert,
    /// `disks.get`.
    DiskGet,
    /// `disks.list`.
    DiskList,
    /// `disks.resize`.
    DiskResize,
    /// `disks.delete`.
    DiskDelete,
    /// `instances.insert`.
    InstanceInsert,
    /// `instances.get`.
    InstanceGet,
    /// `instances.list`.
    InstanceList,
    /// `instances.delete`.
    InstanceDelete,
    /// `instances.getSerialPortOutput`.
    InstanceSerialPort,
    /// `instances.setMetadata`.
    InstanceSetMetadata,
    /// `instances.stop`.
    InstanceStop,
    /// `images.insert`.
    ImageInsert,
    /// `images.get`.
    ImageGet,
    /// `images.list`.
    ImageList,
    /// `images.getFromFamily`.
    ImageGetFromFamily,
    /// `images.deprecate`.
    ImageDeprecate,
    /// `images.delete`.
    ImageDelete,
}

use Route::*;

/// `(route, HTTP method, path template, discovery resource, discovery method)`.
const TABLE: &[(Route, &str, &str, &str, &str)] = &[
    (
        ZoneOperationGet,
        "GET",
        "projects/{project}/zones/{zone}/operations/{operation}",
        "zoneOperations",
        "get",
    ),
    (
        ZoneOperationWait,
        "POST",
        "projects/{project}/zones/{zone}/operations/{operation}/wait",
        "zoneOperations",
        "wait",
    ),
    (
        GlobalOperationGet,
        "GET",
        "projects/{project}/global/operations/{operation}",
        "globalOperations",
        "get",
    ),
    (
        GlobalOperationWait,
        "POST",
        "projects/{project}/global/operations/{operation}/wait",
        "globalOperations",
        "wait",
    ),
    (
        DiskInsert,
        "POST",
        "projects/{project}/zones/{zone}/disks",
        "disks",
        "insert",
    ),
    (
        DiskGet,
        "GET",
        "projects/{project}/zones/{zone}/disks/{disk}",
        "disks",
        "get",
    ),
    (
        DiskList,
        "GET",
        "projects/{project}/zones/{zone}/disks",
        "disks",
        "list",
    ),
    (
        DiskResize,
        "POST",
        "projects/{project}/zones/{zone}/disks/{disk}/resize",
        "disks",
        "resize",
    ),
    (
        DiskDelete,
        "DELETE",
        "projects/{project}/zones/{zone}/disks/{disk}",
        "disks",
        "delete",
    ),
    (
        InstanceInsert,
        "POST",
        "projects/{project}/zones/{zone}/instances",
        "instances",
        "insert",
    ),
    (
        InstanceGet,
        "GET",
        "projects/{project}/zones/{zone}/instances/{instance}",
        "instances",
        "get",
    ),
    (
        InstanceList,
        "GET",
        "projects/{project}/zones/{zone}/instances",
        "instances",
        "list",
    ),
    (
        InstanceDelete,
        "DELETE",
        "projects/{project}/zones/{zone}/instances/{instance}",
        "instances",
        "delete",
    ),
    (
        InstanceSerialPort,
        "GET",
        "projects/{project}/zones/{zone}/instances/{instance}/serialPort",
        "instances",
        "getSerialPortOutput",
    ),
    (
        InstanceSetMetadata,
        "POST",
        "projects/{project}/zones/{zone}/instances/{instance}/setMetadata",
        "instances",
        "setMetadata",
    ),
    (
        InstanceStop,
        "POST",
        "projects/{project}/zones/{zone}/instances/{instance}/stop",
        "instances",
        "stop",
    ),
    (
        ImageInsert,
        "POST",
        "projects/{project}/global/images",
        "images",
        "insert",
    ),
    (
        ImageGet,
        "GET",
        "projects/{project}/global/images/{image}",
        "images",
        "get",
    ),
    (
        ImageList,
        "GET",
        "projects/{project}/global/images",
        "images",
        "list",
    ),
    (
        ImageGetFromFamily,
        "GET",
        "projects/{project}/global/images/family/{family}",
        "images",
        "getFromFamily",
    ),
    (
        ImageDeprecate,
        "POST",
        "projects/{project}/global/images/{image}/deprecate",
        "images",
        "deprecate",
    ),
    (
        ImageDelete,
        "DELETE",
        "projects/{project}/global/images/{image}",
        "images",
        "delete",
    ),
];

impl Route {
    /// Every route.
    pub fn all() -> impl Iterator<Item = Route> {
        TABLE.iter().map(|r| r.0)
    }

    fn row(
        self,
    ) -> &'static (
        Route,
        &'static str,
        &'static str,
        &'static str,
        &'static str,
    ) {
        TABLE
            .iter()
            .find(|r| r.0 == self)
            .expect("every route is in the table")
    }

    /// The HTTP method.
    pub fn http_method(self) -> &'static str {
        self.row().1
    }

    /// The path template, relative to the compute base, as the discovery document writes it.
    pub fn template(self) -> &'static str {
        self.row().2
    }

    /// The discovery document's `(resource, method)`.
    pub fn discovery(self) -> (&'static str, &'static str) {
        (self.row().3, self.row().4)
    }

    /// Whether the route changes something and answers with an operation.
    pub fn is_mutation(self) -> bool {
        matches!(self.http_method(), "POST" | "DELETE") && !self.is_wait()
    }

    /// Whether the route is an operation's `/wait`.
    pub fn is_wait(self) -> bool {
        matches!(self, ZoneOperationWait | GlobalOperationWait)
    }

    /// Whether `fault` can happen on this route.
    pub fn accepts(self, fault: &Fault) -> bool {
        match fault {
            Fault::Http(_) => true,
            Fault::OpError { .. } | Fault::OpStaysRunning(_) => self.is_mutation(),
            Fault::WaitReturnsEarly => self.is_wait(),
            Fault::ConcurrentMetadataChange => self == InstanceSetMetadata,
        }
    }

    /// The route a request takes (`path` relative to the compute base), if the emulator
    /// serves it.
    pub fn of(method: &str, path: &str) -> Option<Route> {
        Route::parse(method, path).map(|r| r.0)
    }

    /// The route and its captured path segments for a request, if the emulator serves it.
    pub(crate) fn parse(method: &str, path: &str) -> Option<(Route, Vec<String>)> {
        let parts: Vec<&str> = path.split('/').collect();
        TABLE.iter().find_map(|(route, m, template, _, _)| {
            let shape: Vec<&str> = template.split('/').collect();
            if *m != method || shape.len() != parts.len() {
                return None;
            }
            let mut captured = Vec::new();
            for (part, want) in parts.iter().zip(&shape) {
                if want.starts_with('{') {
                    if part.is_empty() {
                        return None;
                    }
                    captured.push((*part).to_string());
                } else if want != part {
                    return None;
                }
            }
            Some((*route, captured))
        })
    }
}
