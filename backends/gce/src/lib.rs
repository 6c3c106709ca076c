//! The Compute Engine side of the COS Customizer: [`backend::GceBackend`], the preload flow's
//! disks, VM and image on GCE, with the CIDATA disk imported through Cloud Storage
//! ([`storage`], [`raw_disk`]); the source image's resolution ([`source`]), the family's
//! deprecation ([`deprecate`]) and the `-enable-cleanup` sweep ([`sweep`]); over a hand-written REST layer on `reqwest`
//! (`http`) under one retry policy (`retry`), Application Default Credentials (`auth`), GCE's errors by reason (`error`), the
//! Compute calls the preload flow makes and their request bodies (`compute`), and the URL and
//! naming rules those bodies follow (`urls`, `names`).
//!
//! Hand-written rather than Google's generated client because `-compute-endpoint` is a base path
//! that `projects/...` is joined to, as upstream does, and because the flow needs `requestId`,
//! one retry policy and classification by reason (see the GCE design brief, §1.3).

pub mod auth;
pub mod backend;
pub mod compute;
pub mod connect;
pub mod deprecate;
pub mod drivers;
pub mod error;
pub mod housekeeping;
pub mod http;
pub mod names;
pub mod raw_disk;
pub mod retry;
pub mod source;
pub mod status;
pub mod storage;
pub mod sweep;
pub mod urls;
