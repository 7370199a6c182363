//! Alert verbs (JOB-4): where a vault's alerts go (webhooks, e-mail), which triggers are on,
//! a test alert through every channel, and the alerts sent.
//!
//! Secrets are read from files (`--webhook-secret-file`, `--smtp-password-file`) so they do not
//! show in the process list or the shell history; the vault never shows them again.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use serde_json::{json, Map, Value};

use crate::api_cmds::{context, Connection, Ctx};
use crate::output::{print, Output};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OnOff {
    On,
    Off,
}

impl OnOff {
    fn on(self) -> bool {
        self == OnOff::On
    }
}

#[derive(Subcommand)]
pub enum AlertCmd {
    /// Show where alerts go and which triggers are on (JOB-4).
    #[command(name = "alerts-show")]
    Show {
        /// List the alerts sent (newest first) with their delivery state instead.
        #[arg(long)]
        deliveries: bool,
        /// Print at most this many entries
        #[arg(long, default_value_t = 20)]
        limit: i64,
    },
    /// Change the alert settings; what is not given stays as it is.
    #[command(name = "alerts-set")]
    Set(SetArgs),
    /// Send a test alert through every configured channel; reports each channel's result
    /// (exit code 1 when one failed).
    #[command(name = "alerts-test")]
    Test,
}

#[derive(Args)]
pub struct SetArgs {
    /// Webhook URL (http or https); repeat for several. Replaces the list; URLs already set keep
    /// their secret.
    #[arg(long = "webhook", value_name = "URL")]
    webhooks: Vec<String>,
    /// Remove every webhook.
    #[arg(long, conflicts_with = "webhooks")]
    no_webhooks: bool,
    /// File holding the shared secret that signs the body of the webhooks given with --webhook
    /// (HMAC-SHA256, header X-Ferry-Signature).
    #[arg(long, value_name = "FILE", requires = "webhooks")]
    webhook_secret_file: Option<PathBuf>,
    /// Remove the secret of the webhooks given with --webhook.
    #[arg(long, requires = "webhooks", conflicts_with = "webhook_secret_file")]
    no_webhook_secret: bool,
    /// SMTP relay, HOST:PORT ([IPv6]:PORT).
    #[arg(long, value_name = "HOST:PORT")]
    smtp_relay: Option<String>,
    /// Upgrade the relay connection with STARTTLS (required when on).
    #[arg(long, value_name = "on|off")]
    starttls: Option<OnOff>,
    /// SMTP user (needs STARTTLS and a password).
    #[arg(long, value_name = "USER")]
    smtp_user: Option<String>,
    /// File holding the SMTP password.
    #[arg(long, value_name = "FILE")]
    smtp_password_file: Option<PathBuf>,
    /// Send without SMTP credentials.
    #[arg(long, conflicts_with_all = ["smtp_user", "smtp_password_file"])]
    no_smtp_auth: bool,
    /// Sender address.
    #[arg(long, value_name = "ADDRESS")]
    from: Option<String>,
    /// Recipient; repeat for several. Replaces the list.
    #[arg(long = "to", value_name = "ADDRESS")]
    to: Vec<String>,
    /// Stop sending e-mail.
    #[arg(long, conflicts_with_all = ["smtp_relay", "starttls", "smtp_user", "smtp_password_file", "from", "to"])]
    no_email: bool,
    /// Alert when a replicated item's health becomes Critical.
    #[arg(long, value_name = "on|off")]
    critical_health: Option<OnOff>,
    /// Alert when a site manager's heartbeat is lost.
    #[arg(long, value_name = "on|off")]
    heartbeat_lost: Option<OnOff>,
    /// Alert when a test, planned or unplanned failover fails.
    #[arg(long, value_name = "on|off")]
    failover_failed: Option<OnOff>,
}

pub async fn run(conn: &Connection, cmd: AlertCmd) -> Result<()> {
    let ctx = context(conn)?;
    match cmd {
        AlertCmd::Show { deliveries: false, .. } => {
            let s: Value = ctx.c.get(&ctx.v("/alertSettings")).await?;
            show(ctx.out, &s);
        }
        AlertCmd::Show { deliveries: true, limit } => {
            let list: Value = ctx.c.get(&ctx.v(&format!("/alerts?limit={limit}"))).await?;
            print(
                ctx.out,
                &list,
                &[
                    ("RAISED", "/alert/raisedAt"),
                    ("KIND", "/alert/kind"),
                    ("SUBJECT", "/alert/subject"),
                    ("CHANNEL", "/channel"),
                    ("STATE", "/state"),
                    ("ATTEMPTS", "/attempts"),
                    ("ERROR", "/last_error"),
                ],
            );
        }
        AlertCmd::Set(args) => set(&ctx, args).await?,
        AlertCmd::Test => test(&ctx).await?,
    }
    Ok(())
}

fn show(out: Output, s: &Value) {
    if out == Output::Json {
        print(out, s, &[]);
        return;
    }
    let mut rows = Vec::new();
    for w in s["webhooks"].as_array().into_iter().flatten() {
        let signed = if w["secret_set"] == true { "signed (secret set)" } else { "not signed" };
        rows.push(json!({"channel": "webhook", "target": w["url"], "details": signed}));
    }
    if let Some(e) = s.get("email").filter(|e| e.is_object()) {
        let mut details = vec![format!("from {}", e["from"].as_str().unwrap_or(""))];
        let to: Vec<&str> = e["to"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
        details.push(format!("to {}", to.join(", ")));
        if e["starttls"] == true {
            details.push("STARTTLS".into());
        }
        if let Some(u) = e["username"].as_str() {
            let pw = if e["password_set"] == true { "password set" } else { "no password" };
            details.push(format!("user {u} ({pw})"));
        }
        let target = format!("{}:{}", e["smtp_host"].as_str().unwrap_or(""), e["smtp_port"]);
        rows.push(json!({"channel": "email", "target": target, "details": details.join("; ")}));
    }
    if rows.is_empty() {
        println!("No alert channel: alerts are not sent (ferry alerts-set --webhook URL or --smtp-relay ...).");
    } else {
        print(out, &Value::Array(rows), &[("CHANNEL", "/channel"), ("TARGET", "/target"), ("DETAILS", "/details")]);
    }
    let t = &s["triggers"];
    let onoff = |k: &str| if t[k] == true { "on" } else { "off" };
    println!(
        "Triggers: critical health {}, site heartbeat lost {}, failover failed {} (settings version {})",
        onoff("critical_health"),
        onoff("site_heartbeat_lost"),
        onoff("failover_failed"),
        s["version"]
    );
}

fn read_secret(path: &Path, what: &str) -> Result<String> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("Cannot read the {what} file {}", path.display()))?;
    let secret = text.trim_end_matches(['\r', '\n']).to_string();
    if secret.is_empty() {
        bail!("The {what} file {} is empty", path.display());
    }
    Ok(secret)
}

/// The settings to PUT: the current ones (secrets absent, so the vault keeps them) with the
/// changes asked for.
fn changed(cur: &Value, a: &SetArgs) -> Result<Value> {
    let mut webhooks: Vec<Value> =
        cur["webhooks"].as_array().into_iter().flatten().map(|w| json!({"url": w["url"]})).collect();
    if a.no_webhooks {
        webhooks.clear();
    }
    if !a.webhooks.is_empty() {
        let secret = match (&a.webhook_secret_file, a.no_webhook_secret) {
            (Some(f), _) => Some(read_secret(f, "webhook secret")?),
            (None, true) => Some(String::new()),
            (None, false) => None,
        };
        webhooks = a
            .webhooks
            .iter()
            .map(|u| {
                let mut w = json!({"url": u});
                if let Some(s) = &secret {
                    w["secret"] = json!(s);
                }
                w
            })
            .collect();
    }
    let touched = a.smtp_relay.is_some()
        || a.starttls.is_some()
        || a.smtp_user.is_some()
        || a.smtp_password_file.is_some()
        || a.no_smtp_auth
        || a.from.is_some()
        || !a.to.is_empty();
    let current_email = cur.get("email").filter(|e| e.is_object());
    let email = if a.no_email || (current_email.is_none() && !touched) {
        None
    } else {
        let mut e = Map::new();
        if let Some(c) = current_email {
            for k in ["smtp_host", "smtp_port", "starttls", "username", "from", "to"] {
                if let Some(v) = c.get(k).filter(|v| !v.is_null()) {
                    e.insert(k.into(), v.clone());
                }
            }
        }
        if let Some(r) = &a.smtp_relay {
            let (host, port) = ferry_core::alerts::parse_relay(r)?;
            e.insert("smtp_host".into(), json!(host));
            e.insert("smtp_port".into(), json!(port));
        }
        if let Some(t) = a.starttls {
            e.insert("starttls".into(), json!(t.on()));
        }
        if a.no_smtp_auth {
            e.remove("username");
            e.insert("password".into(), json!(""));
        }
        if let Some(u) = &a.smtp_user {
            e.insert("username".into(), json!(u));
        }
        if let Some(f) = &a.smtp_password_file {
            e.insert("password".into(), json!(read_secret(f, "SMTP password")?));
        }
        if let Some(f) = &a.from {
            e.insert("from".into(), json!(f));
        }
        if !a.to.is_empty() {
            e.insert("to".into(), json!(a.to));
        }
        if !e.contains_key("smtp_host") || !e.contains_key("from") || !e.contains_key("to") {
            bail!("E-mail alerts need --smtp-relay HOST:PORT, --from ADDRESS and at least one --to ADDRESS");
        }
        if e.get("password").is_some_and(|p| p == "") && !e.contains_key("username") {
            e.remove("password");
        }
        Some(Value::Object(e))
    };
    let mut triggers = cur["triggers"].clone();
    if !triggers.is_object() {
        triggers = json!({});
    }
    for (k, v) in [
        ("critical_health", a.critical_health),
        ("site_heartbeat_lost", a.heartbeat_lost),
        ("failover_failed", a.failover_failed),
    ] {
        if let Some(v) = v {
            triggers[k] = json!(v.on());
        }
    }
    let mut body = json!({"webhooks": webhooks, "triggers": triggers});
    if let Some(e) = email {
        body["email"] = e;
    }
    Ok(body)
}

async fn set(ctx: &Ctx, a: SetArgs) -> Result<()> {
    let path = ctx.v("/alertSettings");
    let cur: Value = ctx.c.get(&path).await?;
    let body = changed(&cur, &a)?;
    let version = cur["version"].as_i64().unwrap_or(0);
    let s: Value = ctx.c.put_if_match(&path, version, &body).await?;
    show(ctx.out, &s);
    Ok(())
}

async fn test(ctx: &Ctx) -> Result<()> {
    let r: Value = ctx.c.post(&ctx.v("/alertSettings/test"), &json!({})).await?;
    let chans = r["channels"].as_array().cloned().unwrap_or_default();
    if ctx.out == Output::Json {
        print(ctx.out, &r, &[]);
    } else {
        let rows: Vec<Value> = chans
            .iter()
            .map(|c| {
                json!({"channel": c["channel"], "result": if c["ok"] == true { "sent" } else { "FAILED" },
                       "error": c["error"]})
            })
            .collect();
        print(ctx.out, &Value::Array(rows), &[("CHANNEL", "/channel"), ("RESULT", "/result"), ("ERROR", "/error")]);
    }
    let failed = chans.iter().filter(|c| c["ok"] != true).count();
    if failed > 0 {
        bail!("{failed} of {} alert channels failed", chans.len());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        a: SetArgs,
    }

    fn args(v: &[&str]) -> SetArgs {
        T::try_parse_from(std::iter::once("t").chain(v.iter().copied())).expect("args").a
    }

    #[test]
    fn job_4_alerts_set_changes_only_what_is_given() {
        let cur = json!({
            "webhooks": [{"url": "https://a.example/1", "secret_set": true}],
            "email": {"smtp_host": "relay", "smtp_port": 25, "starttls": false, "password_set": false,
                      "from": "f@x", "to": ["t@x"]},
            "triggers": {"critical_health": true, "site_heartbeat_lost": true, "failover_failed": true},
            "version": 4
        });
        let b = changed(&cur, &args(&["--failover-failed", "off"])).expect("body");
        assert_eq!(b["webhooks"], json!([{"url": "https://a.example/1"}]), "secret absent: kept by the vault");
        assert_eq!(b["email"]["smtp_host"], "relay");
        assert!(b["email"].get("password").is_none());
        assert_eq!(b["triggers"]["failover_failed"], false);
        assert_eq!(b["triggers"]["critical_health"], true);
        let b = changed(&cur, &args(&["--smtp-relay", "[::1]:2525", "--to", "a@x", "--to", "b@x"])).expect("body");
        assert_eq!((b["email"]["smtp_host"].clone(), b["email"]["smtp_port"].clone()), (json!("::1"), json!(2525)));
        assert_eq!(b["email"]["to"], json!(["a@x", "b@x"]));
        let b = changed(&cur, &args(&["--no-email", "--no-webhooks"])).expect("body");
        assert!(b.get("email").is_none());
        assert_eq!(b["webhooks"], json!([]));
        let b = changed(&cur, &args(&["--webhook", "https://b.example/2", "--no-webhook-secret"])).expect("body");
        assert_eq!(b["webhooks"], json!([{"url": "https://b.example/2", "secret": ""}]));
        assert!(changed(&cur, &args(&["--smtp-relay", "relay"])).is_err(), "relay without a port");
        let none = json!({"webhooks": [], "triggers": {}, "version": 0});
        assert!(changed(&none, &args(&["--from", "f@x"])).is_err(), "new e-mail needs relay, from and to");
        assert!(T::try_parse_from(["t", "--webhook-secret-file", "/x"]).is_err(), "a secret needs --webhook");
    }
}
