//! `fusekit rules`: the lint rule table.

use std::process::ExitCode;

use clap::{Args, ValueEnum};
use fusekit_lint::Code;
use serde_json::json;

/// Arguments of `fusekit rules`.
#[derive(Args)]
pub struct RulesArgs {
    /// Output format.
    #[arg(long, value_enum, default_value_t = RulesFormat::Human)]
    format: RulesFormat,
}

#[derive(Clone, Copy, ValueEnum)]
enum RulesFormat {
    Human,
    Json,
}

/// Prints every rule.
pub fn run(args: &RulesArgs) -> anyhow::Result<ExitCode> {
    match args.format {
        RulesFormat::Human => {
            for code in Code::ALL {
                let fix = if code.fixable() { " (fixable)" } else { "" };
                println!(
                    "{:<9}{:<9}{}{fix}",
                    code.as_str(),
                    code.default_severity().as_str(),
                    code.title()
                );
            }
        }
        RulesFormat::Json => {
            let rules: Vec<_> = Code::ALL
                .iter()
                .map(|c| json!({"code": c.as_str(), "severity": c.default_severity(), "title": c.title(), "fixable": c.fixable()}))
                .collect();
            println!("{}", serde_json::to_string_pretty(&rules)?);
        }
    }
    Ok(ExitCode::SUCCESS)
}
