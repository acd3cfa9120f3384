//! `user mfa`: the control panel's MFA devices, listed as MIAB's CSV or turned off.

use super::{open, print_json, print_outcome};
use crate::cli::Cli;
use anyhow::Result;
use clap::Subcommand;
use serde::Serialize;
use userdb::Access;

#[derive(Debug, Subcommand)]
pub enum MfaCmd {
    /// List a user's MFA devices (CSV: id,type,label).
    Show { email: String },
    /// Disable one MFA device, or all of them.
    Disable { email: String, id: Option<i64> },
}

/// One device as `--json` lists it (never its secret).
#[derive(Debug, Serialize)]
struct MfaRow<'a> {
    id: i64,
    label: Option<&'a str>,
    #[serde(rename = "type")]
    kind: &'a str,
}

pub fn run(cli: &Cli, cmd: &MfaCmd) -> Result<()> {
    match cmd {
        MfaCmd::Show { email } => {
            let db = open(cli, Access::ReadOnly)?;
            let devices = db.mfa(email)?;
            if cli.json {
                let rows: Vec<MfaRow<'_>> = devices
                    .iter()
                    .map(|m| MfaRow {
                        id: m.id,
                        label: m.label.as_deref(),
                        kind: &m.kind,
                    })
                    .collect();
                return print_json(&rows);
            }
            let mut out = String::from("id,type,label\r\n");
            for m in devices {
                out.push_str(&format!(
                    "{},{},{}\r\n",
                    m.id,
                    csv_field(&m.kind),
                    csv_field(m.label.as_deref().unwrap_or(""))
                ));
            }
            print!("{out}");
        }
        MfaCmd::Disable { email, id } => {
            let mut db = open(cli, Access::ReadWrite)?;
            print_outcome(&db.disable_mfa(email, *id)?);
        }
    }
    Ok(())
}

/// One field as Python's `csv.writer` writes it (QUOTE_MINIMAL).
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\r', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}
