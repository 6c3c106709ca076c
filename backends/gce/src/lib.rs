//! The Compute Engine side of the COS Customizer: a hand-written REST layer over `reqwest`
//! (`http`), Application Default Credentials (`auth`), GCE's errors by reason (`error`), the
//! Compute calls the preload flow makes and their request bodies (`compute`), and the URL and
//! naming rules those bodies follow (`urls`, `names`).
//!
//! Hand-written rather than Google's generated client because `-compute-endpoint` is a base path
//! that `projects/...` is joined to, as upstream does, and because the flow needs `requestId`,
//! one retry policy and classification by reason (see the GCE design brief, §1.3).

pub mod auth;
pub mod compute;
pub mod error;
pub mod http;
pub mod names;
pub mod urls;

#[cfg(test)]
mod testserver;
