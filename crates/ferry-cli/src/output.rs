//! Printing results as tables or JSON (`--output table|json`).

use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Table,
    Json,
}

/// Print `value`; for tables, `columns` are (header, JSON pointer) pairs applied to each row.
pub fn print(out: Output, value: &Value, columns: &[(&str, &str)]) {
    match out {
        Output::Json => println!("{}", serde_json::to_string_pretty(value).unwrap_or_default()),
        Output::Table => {
            let rows: Vec<&Value> = match value {
                Value::Array(a) => a.iter().collect(),
                Value::Object(o) if o.contains_key("items") => {
                    o.get("items").and_then(|i| i.as_array()).map(|a| a.iter().collect()).unwrap_or_default()
                }
                other => vec![other],
            };
            if columns.is_empty() {
                println!("{}", serde_json::to_string_pretty(value).unwrap_or_default());
                return;
            }
            let cells: Vec<Vec<String>> =
                rows.iter().map(|r| columns.iter().map(|(_, p)| cell(r.pointer(p))).collect()).collect();
            let mut widths: Vec<usize> = columns.iter().map(|(h, _)| h.len()).collect();
            for row in &cells {
                for (i, c) in row.iter().enumerate() {
                    widths[i] = widths[i].max(c.chars().count());
                }
            }
            let line = |items: Vec<String>| {
                items
                    .iter()
                    .enumerate()
                    .map(|(i, s)| format!("{:<w$}", s, w = widths[i]))
                    .collect::<Vec<_>>()
                    .join("  ")
                    .trim_end()
                    .to_string()
            };
            println!("{}", line(columns.iter().map(|(h, _)| h.to_string()).collect()));
            for row in cells {
                println!("{}", line(row));
            }
            if let Some(next) = value.get("next").and_then(|n| n.as_str()) {
                println!("(more: --cursor {next})");
            }
        }
    }
}

fn cell(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => "-".into(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(a)) => a.iter().map(|x| cell(Some(x))).collect::<Vec<_>>().join(","),
        Some(other) => other.to_string(),
    }
}

/// `ferry item-show` as text: state and health with their reasons, the RPO and where its time
/// went (explainable RPO, REP-5), statistics, then the recovery points.
pub fn item_text(i: &Value) -> String {
    use std::fmt::Write as _;
    let s = |p: &str| cell(i.pointer(p));
    let n = |p: &str| i.pointer(p).and_then(Value::as_u64).unwrap_or(0);
    let mut t = String::new();
    let _ = writeln!(t, "{}  ({})", s("/name"), s("/id"));
    let _ = writeln!(t, "  State       {}  ({})", s("/state"), s("/direction"));
    let _ = writeln!(t, "  Source      {}", s("/source/host_name"));
    let _ = writeln!(t, "  Target      {}", s("/target/host_name"));
    let _ = writeln!(t, "  Health      {}", s("/health"));
    for r in i.pointer("/health_reasons").and_then(Value::as_array).into_iter().flatten() {
        let _ = writeln!(t, "              - {}", r.as_str().unwrap_or_default());
    }
    let rpo = match i.pointer("/stats/rpo_secs").and_then(Value::as_u64) {
        Some(secs) => ferry_core::health::fmt_age(chrono::Duration::seconds(secs as i64)),
        None => "— (no recovery point yet)".into(),
    };
    let _ = writeln!(t, "  RPO         {rpo}  (newest point {})", s("/stats/latest_point"));
    if n("/stats/interval_secs") > 0 {
        let _ = writeln!(t, "  Interval    {} s", n("/stats/interval_secs"));
    }
    let _ = writeln!(
        t,
        "  Cycles      {} missed of {} expected in the last hour; {} done, {} failed since the agent started",
        n("/stats/cycles_missed_hour"),
        n("/stats/cycles_expected_hour"),
        n("/stats/cycles_ok"),
        n("/stats/cycles_missed")
    );
    let _ = writeln!(t, "  Waiting     {} bytes changed and not sent yet", n("/stats/data_waiting_bytes"));
    if let Some(e) = i.pointer("/stats/last_error").and_then(Value::as_str) {
        let _ = writeln!(t, "  Failing     since {}: {e}", s("/stats/failing_since"));
    }
    if let Some(x) = i.pointer("/stats/rpo_explanation") {
        let _ = writeln!(t, "  Why this RPO:");
        for f in x.pointer("/findings").and_then(Value::as_array).into_iter().flatten() {
            let _ = writeln!(t, "              - {}", f.as_str().unwrap_or_default());
        }
        if x.pointer("/cycles").and_then(Value::as_u64).unwrap_or(0) > 0 {
            let ms = |p: &str| ferry_core::rpo::fmt_ms(x.pointer(p).and_then(Value::as_u64).unwrap_or(0));
            let _ = writeln!(
                t,
                "              per point: interval {}, capture {}, transfer {}, apply {}, bandwidth limit {}, retries {}, paused {}, window {}",
                ms("/schedule_ms"),
                ms("/capture_ms"),
                ms("/transfer_ms"),
                ms("/apply_ms"),
                ms("/throttled_ms"),
                ms("/backoff_ms"),
                ms("/paused_ms"),
                ms("/window_ms")
            );
        }
    }
    let points = i.pointer("/recovery_points").and_then(Value::as_array).map(Vec::len).unwrap_or(0);
    let _ = writeln!(t, "  Points      {points} (ferry point-list {})", s("/name"));
    let ops: Vec<String> = i
        .pointer("/allowed_operations")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|o| o.as_str().map(str::to_string))
        .collect();
    let _ = writeln!(t, "  Operations  {}", ops.join(", "));
    t
}
