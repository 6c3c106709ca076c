//! The output image's SBOM, as the original's `sbomutil`: an SPDX 2.2 JSON document made
//! from the user's SBOM input (a JSON file in the build context) once the image is built.
//!
//! The document has the original's fields, shapes and order (the spdx `tools-golang` v2_2
//! JSON structs): creator `Tool: gcr.io/cos-cloud/cos-customizer` plus the input's creators, a
//! root package named after the output image that the document DESCRIBES, and that CONTAINS
//! the input's `SPDXPackages`, the input's `SBOMPackages` (as external document refs) and, for
//! a `cos-cloud` source, the source image's published SBOM; NOASSERTION fills the mandatory
//! package fields left empty. Where the original's document is not valid SPDX it is fixed, so
//! SPDX validators accept ours:
//! - `documentNamespace` is a unique URI (the original writes NOASSERTION, which is no URI);
//! - an empty `packageVerificationCode` and an empty `licenseInfoFromFiles` are left out, as
//!   `tools-golang` itself does since v0.5.4 (the original's v0.5.3 writes `{"…Value": ""}`,
//!   which validators refuse with `filesAnalyzed` false, and `null`);
//! - a package without a supplier gets NOASSERTION (the original crashes on it);
//! - an SPDX ID made from the image's name keeps only the characters SPDX IDs may hold.
//!
//! The input is checked whole when it is read, before the build, so a mistake in it costs no
//! build: unknown fields (a typo, or a field SPDX 2.2 lacks) are refused rather than dropped.

mod generation;
mod input;
mod lookup;
mod output;
#[cfg(test)]
mod testdata;
mod types;
mod validation;

pub use generation::generate;
pub use lookup::{CosImageSbom, COS_TOOLS_BUCKET};
pub use output::{Sbom, Storage};
pub use types::{Document, Input, SbomPackage, Stamp};
