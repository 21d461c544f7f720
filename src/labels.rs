//! The intent and outcome labels shared by the rules, the script, the store and the eval
//! report. Spelled exactly as in `shared/scenario.md`, plus `line_failed` beside them (a
//! transport outcome the scenario does not name: the line, not the callee, ended the call).

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

macro_rules! label_enum {
    ($(#[$meta:meta])* $name:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name { $($variant),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = UnknownLabel;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($text => Ok($name::$variant),)+
                    _ => Err(UnknownLabel {
                        kind: stringify!($name),
                        label: s.to_string(),
                        known: vec![$($text),+],
                    }),
                }
            }
        }
    };
}

/// A label that is not in `shared/scenario.md`.
#[derive(Debug, Clone, thiserror::Error)]
#[error("unknown {kind} label `{label}` (known: {})", known.join(", "))]
pub struct UnknownLabel {
    pub kind: &'static str,
    pub label: String,
    pub known: Vec<&'static str>,
}

label_enum!(
    /// What one callee utterance means.
    Intent {
        ConfirmIdentity => "confirm_identity",
        WrongPerson => "wrong_person",
        Busy => "busy",
        WillRenew => "will_renew",
        SelfService => "self_service",
        Decline => "decline",
        DoNotCall => "do_not_call",
        WrittenOnly => "written_only",
        AskCallAgain => "ask_call_again",
        AskWhyCall => "ask_why_call",
        AskCloseAccount => "ask_close_account",
        AskDataHandling => "ask_data_handling",
        StopMessages => "stop_messages",
        HostileHangup => "hostile_hangup",
        Acknowledge => "acknowledge",
        AskRepeat => "ask_repeat",
        Unknown => "unknown",
    }
);

label_enum!(
    /// Why a call ended; exactly one per call.
    Outcome {
        SelfService => "self_service",
        Declined => "declined",
        DoNotCall => "do_not_call",
        WrittenOnly => "written_only",
        ClosingAccount => "closing_account",
        Hostile => "hostile",
        CalleeHangup => "callee_hangup",
        NoResponse => "no_response",
        WrongPerson => "wrong_person",
        MaxDuration => "max_duration",
        // The line failed under the call (the stream lost without Twilio's `stop`, an
        // unreadable frame): the callee neither hung up nor refused. No do-not-call; a
        // campaign treats it like no answer.
        LineFailed => "line_failed",
    }
);

impl Intent {
    /// Decisive intents end the call; the order is the outcome precedence of
    /// `scenario.md`, strongest first.
    pub const DECISIVE_BY_PRECEDENCE: &'static [Intent] = &[
        Intent::WrongPerson,
        Intent::HostileHangup,
        Intent::WrittenOnly,
        Intent::DoNotCall,
        Intent::Decline,
        Intent::SelfService,
        Intent::WillRenew,
    ];

    pub fn is_decisive(self) -> bool {
        Self::DECISIVE_BY_PRECEDENCE.contains(&self)
    }
}

impl Outcome {
    /// Whether this outcome puts the number on the permanent do-not-call list.
    pub fn adds_to_do_not_call(self) -> bool {
        matches!(
            self,
            Outcome::Declined
                | Outcome::DoNotCall
                | Outcome::WrittenOnly
                | Outcome::ClosingAccount
                | Outcome::Hostile
                | Outcome::CalleeHangup
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_round_trip_through_text_and_serde() {
        for intent in Intent::ALL {
            assert_eq!(intent.as_str().parse::<Intent>().unwrap(), *intent);
            let json = serde_json::to_string(intent).unwrap();
            assert_eq!(json, format!("\"{}\"", intent.as_str()));
        }
        for outcome in Outcome::ALL {
            assert_eq!(outcome.as_str().parse::<Outcome>().unwrap(), *outcome);
        }
    }

    #[test]
    fn unknown_label_names_the_known_ones() {
        let err = "maybe_later".parse::<Intent>().unwrap_err();
        let message = err.to_string();
        assert!(message.contains("maybe_later"), "{message}");
        assert!(message.contains("confirm_identity"), "{message}");
    }

    #[test]
    fn do_not_call_follows_the_outcome_table() {
        let dnc: Vec<_> = Outcome::ALL
            .iter()
            .filter(|o| o.adds_to_do_not_call())
            .map(|o| o.as_str())
            .collect();
        assert_eq!(
            dnc,
            [
                "declined",
                "do_not_call",
                "written_only",
                "closing_account",
                "hostile",
                "callee_hangup"
            ]
        );
    }
}
