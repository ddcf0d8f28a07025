//! Backup-cycle benchmark on the real guest (ignored in the normal suite; run by
//! `tools/bench-cycle.sh`): per cycle freeze duration, split pause, archive throughput, resync
//! bytes and pause, total time, QEMU's reads of its disks; and the guest's own write rate while
//! cycles run back to back against its rate with no cycle running, measured by the guest itself
//! (ctl `report`: bytes written per disk and guest uptime). Prints markdown.

use crate::harness::guest::{guest_vm, Guest};
use crate::harness::{Daemon, MIB};
use crate::pair_tests::{attach_and_pair_qga, s};
use std::time::{Duration, Instant};

/// (bytes written per disk, guest time in 1/100 s) from the guest's own counters.
fn counters(g: &Guest) -> anyhow::Result<(u64, u64)> {
    let r = g.ctl("report")?;
    let field = |k: &str| r.split_whitespace().find_map(|w| w.strip_prefix(&format!("{k}="))).and_then(|v| v.parse::<u64>().ok());
    Ok((field("bytes_per_disk").unwrap_or(0), field("t_cs").unwrap_or(0)))
}

fn rate(a: (u64, u64), b: (u64, u64)) -> f64 {
    (b.0 - a.0) as f64 * 100.0 / (b.1 - a.1).max(1) as f64
}

#[tokio::test]
#[ignore = "benchmark: run tools/bench-cycle.sh"]
async fn bench_cycle() -> anyhow::Result<()> {
    crate::harness::init();
    let g = guest_vm("bench", 2, 512 * MIB, "qsplit.workload=on qsplit.size=1048576").await?;
    g.wait_console("QSPLIT-GUEST: workload started", Duration::from_secs(60)).await?;
    let d = Daemon::start()?;
    attach_and_pair_qga(&d, &g.vm, &["vd0", "vd1"])?;
    let archive = g.vm.dir().join("bench.tap");
    // The guest's rate in alternating windows: idle (pairs duplex, no cycle), then cycles back
    // to back; three of each, so drift in the machine's load hits both sides alike.
    let window = Duration::from_secs(10);
    let (mut idle, mut during, mut during_nofreeze) = (vec![], vec![], vec![]);
    let mut rows = vec![];
    let mut n = 0;
    // Six rounds of: an idle window, then a window of cycles, frozen and crash-consistent in
    // turn (to tell the freeze's share of the cost from the rest).
    for (round, flag) in ["--freeze", "--no-freeze", "--freeze", "--no-freeze", "--freeze", "--no-freeze"].iter().enumerate() {
        let _ = round;
        let a = counters(&g)?;
        tokio::time::sleep(window).await; // measuring a rate over a fixed window, not synchronising
        let b = counters(&g)?;
        idle.push(rate(a, b));
        let t = Instant::now();
        let c0 = counters(&g)?;
        while t.elapsed() < window {
            n += 1;
            let r = d.cli_json(&["backup", "bench", "--archive", s(&archive), flag])?;
            for disk in r["disks"].as_array().unwrap() {
                let bytes = disk["bytes_archived"].as_u64().unwrap_or(0);
                let ms = disk["archive_ms"].as_u64().unwrap_or(1).max(1);
                rows.push(format!(
                    "| {n} | {} | {} | {} | {:.1} | {} ({:.1} MiB) | {:.0} MiB/s | {:.1} MiB | {:.1} | {:.0} | {} |",
                    disk["drive"].as_str().unwrap_or(""),
                    disk["type"].as_str().unwrap_or(""),
                    r["freeze_ms"].as_f64().map(|f| format!("{f:.0}")).unwrap_or("-".into()),
                    r["pause_ms"].as_f64().unwrap_or(0.0),
                    disk["archive_set"],
                    bytes as f64 / MIB as f64,
                    bytes as f64 / MIB as f64 / (ms as f64 / 1000.0),
                    disk["resync_bytes"].as_u64().unwrap_or(0) as f64 / MIB as f64,
                    disk["resync_pause_ms"].as_f64().unwrap_or(0.0),
                    r["total_ms"].as_f64().unwrap_or(0.0),
                    disk["primary_bytes_read"],
                ));
            }
        }
        let c1 = counters(&g)?;
        if *flag == "--freeze" {
            during.push(rate(c0, c1))
        } else {
            during_nofreeze.push(rate(c0, c1))
        }
    }
    let idle_n = idle.len();
    let med = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v[v.len() / 2]
    };
    let (idle, during, during_nofreeze) = (med(&mut idle), med(&mut during), med(&mut during_nofreeze));
    println!("\n| cycle | disk | set type | freeze ms | split pause ms | set (archived) | archive rate | resync copied | resync pause ms | cycle total ms | primary_bytes_read |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        println!("{r}");
    }
    println!("\n| guest write rate per disk | value |\n|---|---|");
    println!("| idle (duplex, no cycle; median) | {:.0} KiB/s |", idle / 1024.0);
    println!("| idle windows | {} of {} s, alternating with the cycle windows |", idle_n, window.as_secs());
    println!(
        "| during back-to-back frozen cycles (median of 3 windows of {} s) | {:.0} KiB/s ({:.2}x of idle) |",
        window.as_secs(),
        during / 1024.0,
        during / idle.max(1.0)
    );
    println!(
        "| during back-to-back crash-consistent cycles (same) | {:.0} KiB/s ({:.2}x of idle) |",
        during_nofreeze / 1024.0,
        during_nofreeze / idle.max(1.0)
    );
    println!("| cycles run | {n} |");
    Ok(())
}
