//! Command-line flags for every hyperparameter, generated from the same table as [`Hyp`]
//! (`hyp_fields!`), so a key, its type, its help and its parsing are declared once.
//!
//! `HypOverrides` implements [`clap::Args`]: a command flattens it
//! (`#[command(flatten)] hyp: HypOverrides`) and gets `--epochs`, `--lr0`, `--box`, ... with
//! Ultralytics' names. Boolean keys take an optional value: `--cos-lr` means
//! `--cos-lr true`, and `--ema false` turns the EMA off.
//!
//! [`Hyp`]: crate::Hyp

use std::str::FromStr;

use clap::{Arg, ArgMatches, Args, FromArgMatches};

use crate::{Amp, HypOverrides};

/// The flag of one key: `--key-name VALUE`, parsed with the type's `FromStr`, shown under
/// "Hyperparameters" in `--help`.
pub(crate) fn flag<T>(key: &'static str, doc: &[&str], expected: &'static str) -> Arg
where
    T: FromStr + Clone + Send + Sync + 'static,
    T::Err: std::fmt::Display,
{
    let help: String = doc
        .iter()
        .map(|line| line.trim())
        .collect::<Vec<_>>()
        .join(" ");
    let arg = Arg::new(key)
        .long(key.replace('_', "-"))
        .help(format!("{help} [{expected}]"))
        .help_heading("Hyperparameters (hyp.yaml keys; these win over --hyp)")
        .value_name("VALUE")
        .value_parser(move |text: &str| {
            text.parse::<T>()
                .map_err(|e| format!("`{key}` must be {expected}: {e}"))
        });
    let type_id = std::any::TypeId::of::<T>();
    if type_id == std::any::TypeId::of::<bool>() {
        arg.num_args(0..=1)
            .default_missing_value("true")
            .value_name("BOOL")
    } else if type_id == std::any::TypeId::of::<Amp>() {
        // Ultralytics' boolean, so `--amp` alone still means `--amp true` (auto).
        arg.num_args(0..=1)
            .default_missing_value("true")
            .value_name("MODE")
    } else {
        arg
    }
}

impl FromArgMatches for HypOverrides {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        Ok(HypOverrides::from_flags(matches))
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        *self = HypOverrides::from_flags(matches);
        Ok(())
    }
}

impl Args for HypOverrides {
    fn augment_args(command: clap::Command) -> clap::Command {
        command.args(HypOverrides::flags())
    }

    fn augment_args_for_update(command: clap::Command) -> clap::Command {
        Self::augment_args(command)
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::{Fusion, Hyp};

    #[derive(Parser)]
    struct Command {
        #[command(flatten)]
        hyp: HypOverrides,
    }

    fn parse(args: &[&str]) -> Result<HypOverrides, clap::Error> {
        Command::try_parse_from(std::iter::once("train").chain(args.iter().copied())).map(|c| c.hyp)
    }

    #[test]
    fn every_key_is_a_flag_with_its_own_type() {
        let given = parse(&[
            "--epochs",
            "3",
            "--lr0",
            "0.02",
            "--box",
            "5",
            "--fusion",
            "late",
            "--cos-lr",
            "--ema",
            "false",
            "--model-scale",
            "s",
        ])
        .unwrap();
        assert_eq!(given.epochs, Some(3));
        assert_eq!(given.lr0, Some(0.02));
        assert_eq!(given.box_gain, Some(5.0));
        assert_eq!(given.fusion, Some(Fusion::Late));
        assert_eq!(given.cos_lr, Some(true));
        assert_eq!(given.ema, Some(false));
        assert_eq!(given.batch, None);
        let command = <Command as clap::CommandFactory>::command();
        let flags = command
            .get_arguments()
            .filter(|a| a.get_long().is_some())
            .count();
        assert_eq!(flags, Hyp::KEYS.len());
    }

    #[test]
    fn a_bad_value_names_the_key_and_what_it_accepts() {
        let err = parse(&["--batch", "many"]).unwrap_err().to_string();
        assert!(err.contains("`batch` must be a whole number >= 1"), "{err}");
        let err = parse(&["--fusion", "sideways"]).unwrap_err().to_string();
        assert!(err.contains("one of rgb, ir, early, mid, late"), "{err}");
        let err = parse(&["--amp", "fp8"]).unwrap_err().to_string();
        assert!(
            err.contains("`amp` must be auto, bf16, fp16 or off"),
            "{err}"
        );
    }

    #[test]
    fn amp_takes_a_dtype_or_stands_alone() {
        assert_eq!(parse(&["--amp", "bf16"]).unwrap().amp, Some(Amp::Bf16));
        assert_eq!(parse(&["--amp", "false"]).unwrap().amp, Some(Amp::Off));
        assert_eq!(parse(&["--amp"]).unwrap().amp, Some(Amp::Auto));
        assert_eq!(parse(&[]).unwrap().amp, None);
    }
}
