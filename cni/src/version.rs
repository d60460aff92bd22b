//! The CNI specification versions this plugin speaks, and what each one allows.
//!
//! The version is taken from the network configuration (`cniVersion`); the runtime has already
//! converted `prevResult` to that version, but [`crate::result`] does not rely on it.

use std::fmt;

use serde_json::{Value, json};

/// A CNI specification version this plugin supports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CniVersion {
    /// 0.3.0: results with `interfaces`, `ips[].version`, `routes`, `dns`.
    V0_3_0,
    /// 0.3.1: same result format as 0.3.0.
    V0_3_1,
    /// 0.4.0: adds CHECK and `prevResult` on DEL/CHECK.
    V0_4_0,
    /// 1.0.0: drops `ips[].version`.
    V1_0_0,
    /// 1.1.0: adds STATUS and GC.
    V1_1_0,
}

impl CniVersion {
    /// Every supported version, oldest first.
    pub const ALL: [CniVersion; 5] = [
        CniVersion::V0_3_0,
        CniVersion::V0_3_1,
        CniVersion::V0_4_0,
        CniVersion::V1_0_0,
        CniVersion::V1_1_0,
    ];

    /// The newest supported version: used when the request does not name a usable one.
    pub const LATEST: CniVersion = CniVersion::V1_1_0;

    /// Parses a `cniVersion` string; `None` for versions this plugin does not speak.
    pub fn parse(s: &str) -> Option<CniVersion> {
        Self::ALL.into_iter().find(|v| v.as_str() == s)
    }

    /// The version as written in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            CniVersion::V0_3_0 => "0.3.0",
            CniVersion::V0_3_1 => "0.3.1",
            CniVersion::V0_4_0 => "0.4.0",
            CniVersion::V1_0_0 => "1.0.0",
            CniVersion::V1_1_0 => "1.1.0",
        }
    }

    /// Whether the spec at this version defines CHECK (0.4.0 and later).
    pub fn allows_check(self) -> bool {
        self >= CniVersion::V0_4_0
    }

    /// Whether the spec at this version defines STATUS and GC (1.1.0 and later).
    pub fn allows_status_and_gc(self) -> bool {
        self >= CniVersion::V1_1_0
    }

    /// Whether results at this version carry `ips[].version` ("4"/"6"): before 1.0.0 only.
    pub fn ips_carry_version(self) -> bool {
        self < CniVersion::V1_0_0
    }

    /// The supported versions as a comma-separated list, for error messages.
    pub fn supported_list() -> String {
        Self::ALL.map(CniVersion::as_str).join(", ")
    }

    /// The answer to the VERSION command for a request at this version.
    pub fn version_info(self) -> Value {
        json!({
            "cniVersion": self.as_str(),
            "supportedVersions": Self::ALL.map(CniVersion::as_str),
        })
    }
}

impl fmt::Display for CniVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_round_trips_every_version() {
        for v in CniVersion::ALL {
            assert_eq!(CniVersion::parse(v.as_str()), Some(v));
        }
        for bad in ["", "0.2.0", "0.1.0", "1.0", "9.9.9", "1.1.0 ", "v1.0.0"] {
            assert_eq!(CniVersion::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn capabilities_follow_the_spec() {
        assert!(!CniVersion::V0_3_1.allows_check());
        assert!(CniVersion::V0_4_0.allows_check());
        assert!(!CniVersion::V1_0_0.allows_status_and_gc());
        assert!(CniVersion::V1_1_0.allows_status_and_gc());
        assert!(CniVersion::V0_4_0.ips_carry_version());
        assert!(!CniVersion::V1_0_0.ips_carry_version());
    }

    #[test]
    fn version_info_lists_all_versions() {
        assert_eq!(
            CniVersion::V0_4_0.version_info(),
            json!({
                "cniVersion": "0.4.0",
                "supportedVersions": ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]
            })
        );
    }
}
