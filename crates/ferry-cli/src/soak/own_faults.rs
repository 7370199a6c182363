//! The faults the soak runs itself, because it checks invariants while they last: a replica
//! location that runs full (invariant 4: Critical with `ReplicaFull`), a host agent on a wrong
//! clock (invariant 4: `ClockSkew`, no faked stall or RPO) and a flipped bit in a replica layer
//! (invariant 5: found, reported, healed).

use super::*;

/// A replica location runs full for longer than a copy frequency: the items replicating to it
/// turn Critical with the cause (invariant 4); then it is freed (the recovery is checked by the
/// caller, invariant 1).
pub(super) async fn replica_location_full(
    soak: &Soak,
    n: usize,
    pick: usize,
    items: &[Value],
) -> Result<faults::FaultEffect> {
    let locations = soak.locations.as_ref().context("no small replica locations (the soak needs root for them)")?;
    let dir = soak.lab.dir.clone();
    // Items whose replica lies in the small location of their target host (the lab places some
    // VMs on other storage classifications: their replicas live elsewhere).
    let in_small = move |i: &Value| {
        let host = i["target"]["host_name"].as_str().unwrap_or_default();
        full_disk::HOSTS.contains(&host) && full_disk::holds_replica_of(&full_disk::location(&dir, host), i)
    };
    let mut targets: Vec<String> = items
        .iter()
        .filter(|i| in_small(i))
        .filter_map(|i| i["target"]["host_name"].as_str())
        .map(str::to_string)
        .collect();
    targets.sort();
    targets.dedup();
    let host = targets.get(pick % targets.len().max(1)).cloned().unwrap_or_else(|| full_disk::HOSTS[0].to_string());
    let filler = locations.fill(&host)?;
    let hold = COPY_FREQUENCY + Duration::from_secs(15);
    tokio::time::sleep(hold).await;
    // Invariant 4 while it lasts: every item that tried to replicate to it since shows why not.
    let deadline = Instant::now() + Duration::from_secs(20);
    let wrong: Vec<String> = loop {
        let busy = soak.state.lock().map(|s| s.busy.clone()).unwrap_or_default();
        let now = ops::items(&soak.lab).await.unwrap_or_default();
        let wrong: Vec<String> = now
            .iter()
            .filter(|i| {
                i["state"] == "Protected"
                    && i["target"]["host_name"] == host.as_str()
                    && in_small(i)
                    && !busy.contains(i["id"].as_str().unwrap_or(""))
            })
            .filter(|i| {
                !(i["health"] == "Critical"
                    && i["health_reasons"]
                        .as_array()
                        .is_some_and(|r| r.iter().any(|r| r.as_str().is_some_and(|r| r.starts_with("ReplicaFull")))))
            })
            .map(|i| format!("{} is {} ({})", i["name"], i["health"], i["health_reasons"]))
            .collect();
        if wrong.is_empty() || Instant::now() > deadline {
            break wrong;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    };
    soak.checked("4 Critical while the replica location is full");
    for w in wrong {
        soak.violation(n, 4, format!("the replica location on {host} is full for {} s, but {w}", hold.as_secs()));
    }
    drop(filler);
    Ok(faults::FaultEffect {
        target: format!("replica location GOLD_TARGET on {host} full"),
        held: Some(hold),
        ..Default::default()
    })
}

/// One bit flips in a replica layer on disk (bit rot): verifying the point finds it and names
/// it (invariant 5, never served silently), the item's health says so, and a repair heals the
/// replica from the source: its newest point verifies again. The item is kept from operations
/// while this lasts.
pub(super) async fn bit_flip(soak: &Soak, n: usize, pick: usize, items: &[Value]) -> Result<faults::FaultEffect> {
    let candidates: Vec<&Value> = {
        let busy = soak.state.lock().map(|s| s.busy.clone()).unwrap_or_default();
        items
            .iter()
            .filter(|i| i["state"] == "Protected" && !busy.contains(i["id"].as_str().unwrap_or("")))
            .filter(|i| i["recovery_points"].as_array().is_some_and(|p| !p.is_empty()))
            .collect()
    };
    let it = candidates.get(pick % candidates.len().max(1)).context("no protected item with recovery points yet")?;
    let id = it["id"].as_str().unwrap_or_default().to_string();
    let name = it["name"].as_str().unwrap_or_default().to_string();
    let host = it["target"]["host_name"].as_str().unwrap_or_default().to_string();
    if let Ok(mut s) = soak.state.lock() {
        s.busy.insert(id.clone());
        // The repair compares block hashes with the source: a resync the soak asked for.
        s.resync_allowed.insert(id.clone());
    }
    let outcome = damage_and_repair(soak, n, pick, &id, &name, &host).await;
    if let Ok(mut s) = soak.state.lock() {
        s.busy.remove(&id);
    }
    outcome
}

pub(super) async fn damage_and_repair(
    soak: &Soak,
    n: usize,
    pick: usize,
    id: &str,
    name: &str,
    host: &str,
) -> Result<faults::FaultEffect> {
    let lab = &soak.lab;
    let store = ferry_repl::ReplicaStore::open(&lab.host_data(host).join("replicas"))?;
    let vm = store.vm(id).await?;
    // The newest point whose own layer holds data, on the disk `pick` names.
    let mut hit = None;
    for p in vm.recovery_points()?.iter().rev() {
        for d in p.disks.iter().cycle().skip(pick).take(p.disks.len()) {
            if let Some(offset) = faults::flip_bit_in_layer(&vm.dir().join(&d.file), pick)? {
                hit = Some((p.id.clone(), d.target.clone(), offset));
                break;
            }
        }
        if hit.is_some() {
            break;
        }
    }
    let (point, disk, offset) = hit.context("no recovery point whose layer holds data")?;
    let verify = |point: Option<&str>| {
        let body = match point {
            Some(p) => json!({"recovery_point": p}),
            None => json!({}),
        };
        async move {
            let j: Value = lab
                .client
                .post(&lab.v(&format!("/replicationProtectedItems/{id}/recoveryPoints/verify")), &body)
                .await?;
            let j = ops::wait_job(lab, &j, false, Duration::from_secs(300)).await?;
            let points = j["params"]["outputs"][ferry_vault_verify_task()]["points"].as_array().cloned();
            anyhow::Ok(points.unwrap_or_default())
        }
    };
    // Invariant 5: the damaged point is found (every point is checked, so the newer points
    // that read the same data are marked too).
    let checked = verify(None).await?;
    soak.checked("5 a flipped bit is found");
    let found = checked.iter().any(|p| p["point"] == point.as_str() && p["verification"]["ok"] == false);
    if !found {
        soak.violation(
            n,
            5,
            format!("{name}: a bit flipped in {disk} at {offset} of point {point} on {host}, but verification says {checked:?}"),
        );
    }
    // Reported: the item's health names it (or, if newer points do not read that data, says
    // that older points are damaged).
    let deadline = Instant::now() + Duration::from_secs(30);
    let reported = loop {
        let it = ops::item(lab, id).await.unwrap_or_default();
        let r = it["health_reasons"].to_string();
        if r.contains("ReplicaDamaged") || r.contains("DamagedRecoveryPoints") {
            break true;
        }
        if Instant::now() > deadline {
            break false;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    };
    if found && !reported {
        soak.violation(
            n,
            5,
            format!("{name}: point {point} failed verification, but the item's health does not say so"),
        );
    }
    // Repaired from the source: the newest point verifies again.
    let j: Value =
        lab.client.post(&lab.v(&format!("/replicationProtectedItems/{id}/repairReplication")), &json!({})).await?;
    ops::wait_job(lab, &j, false, Duration::from_secs(300)).await?;
    let deadline = Instant::now() + COPY_FREQUENCY * 4;
    let healed = loop {
        let newest = verify(Some("latest")).await.unwrap_or_default();
        let newer = newest.iter().any(|p| p["point"] != point.as_str() && p["verification"]["ok"] == true);
        if newer || Instant::now() > deadline {
            break newer;
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    };
    // Every point that still reads the flipped bit is marked, so nothing damaged goes unnoticed.
    verify(None).await?;
    if !healed {
        soak.violation(n, 5, format!("{name}: no newer point verifies after the repair of point {point}"));
    }
    Ok(faults::FaultEffect {
        target: format!(
            "{name}: one bit of {disk} at {offset} in point {point} on {host} (found: {found}, healed: {healed})"
        ),
        ..Default::default()
    })
}

/// The task of a verification job whose output lists the points.
pub(super) fn ferry_vault_verify_task() -> &'static str {
    "Verify the recovery points on the replica host"
}

/// A host agent runs on a wrong clock (three minutes behind or two and a half ahead) for two
/// copy frequencies and more: the items it replicates name the skew (invariant 4), and their
/// points stay in order (invariant 2, checked throughout). Then it runs on the right clock
/// again (the recovery is checked by the caller, invariant 1).
pub(super) async fn clock_offset(soak: &Soak, n: usize, pick: usize, hold: Duration) -> Result<faults::FaultEffect> {
    let offset: i64 = if pick.is_multiple_of(2) { -180 } else { 150 };
    let env = faults::wrong_clock_env(offset)?;
    let hosts: Vec<String> =
        soak.lab.processes().iter().filter_map(|p| p.strip_prefix("host-").map(str::to_string)).collect();
    let host = hosts.get(pick % hosts.len().max(1)).cloned().context("no host agent")?;
    let name = format!("host-{host}");
    let argv = soak.lab.kill(&name)?;
    soak.lab.restart_with_env(&name, &argv, &env)?;
    let hold = COPY_FREQUENCY * 2 + hold;
    let t0 = Instant::now();
    // Invariant 4 while it lasts: every item this host replicates from names its clock.
    let mut named = false;
    let mut naming = 0;
    let mut wrong = Vec::new();
    while t0.elapsed() < hold {
        tokio::time::sleep(Duration::from_secs(3)).await;
        let busy = soak.state.lock().map(|s| s.busy.clone()).unwrap_or_default();
        let items = ops::items(&soak.lab).await.unwrap_or_default();
        wrong = items
            .iter()
            .filter(|i| {
                i["state"] == "Protected"
                    && i["source"]["host_name"] == host.as_str()
                    && !busy.contains(i["id"].as_str().unwrap_or(""))
                    && i["stats"]["cycles_ok"].as_u64().unwrap_or(0) > 0
            })
            .filter(|i| {
                !i["health_reasons"]
                    .as_array()
                    .is_some_and(|r| r.iter().any(|r| r.as_str().is_some_and(|r| r.starts_with("ClockSkew"))))
            })
            .map(|i| format!("{} is {} ({})", i["name"], i["health"], i["health_reasons"]))
            .collect();
        naming = naming.max(items.iter().filter(|i| i["health_reasons"].to_string().contains("ClockSkew")).count());
        named |= wrong.is_empty();
    }
    soak.checked("4 a host's wrong clock is named");
    if !named {
        for w in &wrong {
            soak.violation(n, 4, format!("{host}'s clock is {offset:+} s off for {} s, but {w}", hold.as_secs()));
        }
    }
    // On the right clock again (also if the agent died meanwhile: it is started in any case).
    let _ = soak.lab.kill(&name);
    soak.lab.restart(&name, &argv)?;
    Ok(faults::FaultEffect {
        target: format!("{host}'s clock {offset:+} s off ({naming} item(s) named it)"),
        held: Some(hold),
        ..Default::default()
    })
}
