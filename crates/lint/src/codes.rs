//! The stable rule codes, their default severities and descriptions.

use serde::Serialize;

/// How serious a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Blocks training; exit code 1.
    Error,
    /// Likely harmful; exit code 1 with `--strict`.
    Warning,
    /// Worth knowing (background images, unused classes).
    Info,
}

impl Severity {
    /// `error`, `warning` or `info`.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
            Severity::Info => "info",
        }
    }
}

macro_rules! codes {
    ($($variant:ident => ($severity:ident, $fixable:literal, $title:literal),)*) => {
        /// A lint rule. Codes never change meaning once released.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum Code { $(
            #[doc = $title]
            $variant,
        )* }

        impl Code {
            /// Every code, in report order.
            pub const ALL: &'static [Code] = &[$(Code::$variant),*];

            /// The code as written in reports and options (`PAIR001`).
            pub fn as_str(self) -> &'static str {
                match self { $(Code::$variant => stringify!($variant),)* }
            }

            /// Severity when no option changes it.
            pub fn default_severity(self) -> Severity {
                match self { $(Code::$variant => Severity::$severity,)* }
            }

            /// One-line description.
            pub fn title(self) -> &'static str {
                match self { $(Code::$variant => $title,)* }
            }

            /// Whether `--fix` repairs it.
            pub fn fixable(self) -> bool {
                match self { $(Code::$variant => $fixable,)* }
            }
        }
    };
}

codes! {
    PAIR001 => (Error, false, "RGB image has no IR partner"),
    PAIR002 => (Error, false, "IR image has no RGB partner"),
    PAIR003 => (Error, false, "RGB and IR pixel sizes differ"),
    PAIR004 => (Warning, false, "partner exists only under another extension"),
    PAIR005 => (Error, false, "two files in one folder share a stem"),
    PAIR006 => (Error, false, "IR file is identical to (or a plain copy of) the RGB file"),
    PAIR007 => (Warning, false, "IR image is shifted against the RGB image (misregistered pair)"),
    PAIR008 => (Warning, false, "IR image has colour: a colour photo, or RGB and IR swapped"),
    IMG001 => (Error, false, "image cannot be decoded"),
    IMG002 => (Error, false, "truncated image"),
    IMG003 => (Error, false, "a side shorter than 10 px"),
    IMG004 => (Error, false, "format not supported"),
    IMG005 => (Warning, false, "EXIF orientation is not 1"),
    IMG006 => (Warning, false, "image is one constant colour"),
    IMG007 => (Warning, false, "pair has the same content as another pair"),
    IMG008 => (Info, false, "16-bit IR images: mapped to 8 bits by ir_norm"),
    IMG009 => (Warning, false, "cached IR plane would use fewer than 32 grey levels"),
    LBL001 => (Info, false, "label file missing (background image)"),
    LBL002 => (Info, false, "label file empty (background image)"),
    LBL003 => (Error, false, "row without exactly 5 columns"),
    LBL004 => (Error, false, "value is not a finite number"),
    LBL005 => (Error, false, "class id negative, not an integer, or >= nc"),
    LBL006 => (Error, false, "coordinate outside [0, 1] by more than 0.01"),
    LBL007 => (Warning, true, "box edge outside the image (fixable by clipping)"),
    LBL008 => (Error, false, "width or height <= 0"),
    LBL009 => (Warning, true, "duplicate row"),
    LBL010 => (Warning, false, "label file with no image"),
    LBL011 => (Warning, false, "box smaller than 2 px at the training size"),
    LBL012 => (Warning, true, "polygon row in a detection dataset (convertible to a box)"),
    LBL013 => (Error, false, "label file cannot be read (I/O error or not UTF-8)"),
    DS001 => (Error, false, "data yaml invalid (missing key, names/nc disagree, path missing)"),
    DS002 => (Warning, false, "val is the same set as train, or a pair is in both"),
    DS003 => (Info, false, "class in `names` never used, or class imbalance over 50:1"),
    DS004 => (Error, false, "image listed in a split does not exist"),
    DS005 => (Warning, false, "IR is shifted by one offset in most pairs of the dataset"),
}

impl Code {
    /// Parses a code, case-insensitively.
    pub fn parse(text: &str) -> Option<Code> {
        Code::ALL
            .iter()
            .copied()
            .find(|c| c.as_str().eq_ignore_ascii_case(text))
    }

    /// The rule family: `PAIR`, `IMG`, `LBL` or `DS`.
    pub fn family(self) -> &'static str {
        self.as_str().trim_end_matches(|c: char| c.is_ascii_digit())
    }
}

impl std::fmt::Display for Code {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Code {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_and_round_trip() {
        let mut seen = std::collections::HashSet::new();
        for &code in Code::ALL {
            assert!(seen.insert(code.as_str()));
            assert_eq!(Code::parse(&code.as_str().to_lowercase()), Some(code));
        }
        assert_eq!(Code::LBL012.family(), "LBL");
        assert_eq!(Code::parse("LBL999"), None);
    }
}
