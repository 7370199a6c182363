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
