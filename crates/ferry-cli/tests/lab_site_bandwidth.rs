//! CAP-2 per site: a bandwidth schedule set on a site manager is pushed to its hosts, which limit
//! the replication traffic they send with it; the other site's hosts are not affected.

mod common;

use std::time::Duration;

use common::{Lab, LabOptions};

#[test]
fn cap_2_site_bandwidth_is_pushed_to_its_hosts() {
    let lab = Lab::start(LabOptions { site_bandwidth_mib_s: Some(32.0), ..Default::default() });
    let limit = |host: &str| {
        common::host_metrics(&lab, host)
            .lines()
            .find(|l| l.starts_with(&format!("ferry_bandwidth_limit_bytes_per_second{{host=\"{host}\"}}")))
            .map(str::to_string)
    };
    let line = lab.wait_for("ny1 to follow its site's bandwidth", Duration::from_secs(30), || limit("ny1"));
    assert!(line.ends_with(" 33554432"), "{line}");
    let chi1 = limit("chi1").expect("chi1 reports its limit");
    assert!(chi1.ends_with(" -1"), "VMM-Chicago sets no bandwidth: {chi1}");
}
