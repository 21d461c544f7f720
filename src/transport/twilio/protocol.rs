//! The Media Streams wire format, free of I/O: the JSON messages Twilio sends over the
//! WebSocket (`connected`, `start`, `media`, `dtmf`, `mark`, `stop`), the ones the bot sends
//! back (`media`, `mark`, `clear`), and the TwiML that connects a call to the stream.
//!
//! Parsing never panics: anything malformed comes back as a [`ProtocolError`] that says
//! what is wrong, so the call driver can log it with the call id and carry on.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::Deserialize;
use serde_json::json;
use std::collections::BTreeMap;

/// A message from Twilio on the Media Streams WebSocket.
#[derive(Debug, Clone, PartialEq)]
pub enum Inbound {
    Connected {
        protocol: String,
        version: String,
    },
    Start(StartInfo),
    Media {
        stream_sid: String,
        /// Milliseconds since the stream started, as Twilio counts them.
        timestamp: Option<u64>,
        /// μ-law 8 kHz bytes (decoded from base64).
        payload: Vec<u8>,
    },
    Dtmf {
        digit: char,
    },
    Mark {
        name: String,
    },
    Stop {
        call_sid: Option<String>,
    },
    /// An event this code does not know; logged and ignored.
    Unknown {
        event: String,
    },
}

/// What Twilio tells about the stream in its `start` message.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct StartInfo {
    pub stream_sid: String,
    pub call_sid: String,
    pub account_sid: String,
    pub tracks: Vec<String>,
    /// The `<Parameter>`s of the TwiML.
    pub custom_parameters: BTreeMap<String, String>,
    pub encoding: String,
    pub sample_rate: u32,
    pub channels: u32,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ProtocolError {
    #[error("not JSON or not a Media Streams message: {0}")]
    Json(String),
    #[error("`{event}` message is malformed: {reason}")]
    Malformed { event: String, reason: String },
    #[error("media payload is not valid base64: {0}")]
    Base64(String),
    #[error(
        "unsupported media format {encoding} {sample_rate} Hz {channels} ch (need audio/x-mulaw 8000 Hz mono)"
    )]
    Format {
        encoding: String,
        sample_rate: u32,
        channels: u32,
    },
}

/// Twilio sends `sequenceNumber`, `chunk`, `timestamp` as strings; accept numbers too.
fn lenient_u64<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    let value = Option::<serde_json::Value>::deserialize(d)?;
    Ok(match value {
        Some(serde_json::Value::String(s)) => s.trim().parse().ok(),
        Some(serde_json::Value::Number(n)) => n.as_u64(),
        _ => None,
    })
}

#[derive(Deserialize)]
struct Envelope {
    event: String,
}

#[derive(Deserialize)]
struct ConnectedMsg {
    #[serde(default)]
    protocol: String,
    #[serde(default)]
    version: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct StartMsg {
    #[serde(default)]
    stream_sid: Option<String>,
    start: StartBody,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct StartBody {
    #[serde(default)]
    stream_sid: Option<String>,
    call_sid: String,
    #[serde(default)]
    account_sid: String,
    #[serde(default)]
    tracks: Vec<String>,
    #[serde(default)]
    custom_parameters: BTreeMap<String, serde_json::Value>,
    #[serde(default)]
    media_format: Option<MediaFormat>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct MediaFormat {
    #[serde(default)]
    encoding: String,
    #[serde(default, deserialize_with = "lenient_u64")]
    sample_rate: Option<u64>,
    #[serde(default, deserialize_with = "lenient_u64")]
    channels: Option<u64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct MediaMsg {
    #[serde(default)]
    stream_sid: String,
    media: MediaBody,
}

#[derive(Deserialize)]
struct MediaBody {
    #[serde(default)]
    track: Option<String>,
    #[serde(default, deserialize_with = "lenient_u64")]
    timestamp: Option<u64>,
    payload: String,
}

#[derive(Deserialize)]
struct DtmfMsg {
    dtmf: DtmfBody,
}

#[derive(Deserialize)]
struct DtmfBody {
    digit: String,
}

#[derive(Deserialize)]
struct MarkMsg {
    mark: MarkBody,
}

#[derive(Deserialize)]
struct MarkBody {
    name: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct StopMsg {
    #[serde(default)]
    stop: Option<StopBody>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct StopBody {
    #[serde(default)]
    call_sid: Option<String>,
}

fn body<'a, T: Deserialize<'a>>(event: &str, text: &'a str) -> Result<T, ProtocolError> {
    serde_json::from_str(text).map_err(|e| ProtocolError::Malformed {
        event: event.to_string(),
        reason: e.to_string(),
    })
}

/// Parses one text frame from Twilio.
pub fn parse_inbound(text: &str) -> Result<Inbound, ProtocolError> {
    let envelope: Envelope =
        serde_json::from_str(text).map_err(|e| ProtocolError::Json(e.to_string()))?;
    let event = envelope.event.as_str();
    Ok(match event {
        "connected" => {
            let m: ConnectedMsg = body(event, text)?;
            Inbound::Connected {
                protocol: m.protocol,
                version: m.version,
            }
        }
        "start" => {
            let m: StartMsg = body(event, text)?;
            let stream_sid =
                m.stream_sid
                    .or(m.start.stream_sid)
                    .ok_or_else(|| ProtocolError::Malformed {
                        event: event.into(),
                        reason: "no streamSid".into(),
                    })?;
            let (encoding, sample_rate, channels) = match m.start.media_format {
                Some(f) => (
                    f.encoding,
                    f.sample_rate.unwrap_or(8_000) as u32,
                    f.channels.unwrap_or(1) as u32,
                ),
                None => ("audio/x-mulaw".to_string(), 8_000, 1),
            };
            if !encoding.eq_ignore_ascii_case("audio/x-mulaw")
                || sample_rate != 8_000
                || channels != 1
            {
                return Err(ProtocolError::Format {
                    encoding,
                    sample_rate,
                    channels,
                });
            }
            let custom_parameters = m
                .start
                .custom_parameters
                .into_iter()
                .map(|(k, v)| {
                    let v = match v {
                        serde_json::Value::String(s) => s,
                        other => other.to_string(),
                    };
                    (k, v)
                })
                .collect();
            Inbound::Start(StartInfo {
                stream_sid,
                call_sid: m.start.call_sid,
                account_sid: m.start.account_sid,
                tracks: m.start.tracks,
                custom_parameters,
                encoding,
                sample_rate,
                channels,
            })
        }
        "media" => {
            let m: MediaMsg = body(event, text)?;
            if let Some(track) = &m.media.track
                && track != "inbound"
                && track != "inbound_track"
            {
                // Only the callee's side is ever sent with <Connect>; anything else is not
                // audio to listen to.
                return Ok(Inbound::Unknown {
                    event: format!("media on track {track}"),
                });
            }
            let payload = BASE64
                .decode(m.media.payload.as_bytes())
                .map_err(|e| ProtocolError::Base64(e.to_string()))?;
            Inbound::Media {
                stream_sid: m.stream_sid,
                timestamp: m.media.timestamp,
                payload,
            }
        }
        "dtmf" => {
            let m: DtmfMsg = body(event, text)?;
            let mut chars = m.dtmf.digit.chars();
            match (chars.next(), chars.next()) {
                (Some(digit), None) => Inbound::Dtmf { digit },
                _ => {
                    return Err(ProtocolError::Malformed {
                        event: event.into(),
                        reason: format!("digit {:?} is not one key", m.dtmf.digit),
                    });
                }
            }
        }
        "mark" => {
            let m: MarkMsg = body(event, text)?;
            Inbound::Mark { name: m.mark.name }
        }
        "stop" => {
            let m: StopMsg = body(event, text)?;
            Inbound::Stop {
                call_sid: m.stop.and_then(|s| s.call_sid),
            }
        }
        other => Inbound::Unknown {
            event: other.to_string(),
        },
    })
}

/// `media` to Twilio: raw μ-law 8 kHz, base64, no header.
pub fn media_message(stream_sid: &str, mulaw: &[u8]) -> String {
    json!({
        "event": "media",
        "streamSid": stream_sid,
        "media": { "payload": BASE64.encode(mulaw) },
    })
    .to_string()
}

/// `mark` to Twilio; it comes back once everything sent before it has played.
pub fn mark_message(stream_sid: &str, name: &str) -> String {
    json!({ "event": "mark", "streamSid": stream_sid, "mark": { "name": name } }).to_string()
}

/// `clear` to Twilio: drop the buffered audio at once (barge-in).
pub fn clear_message(stream_sid: &str) -> String {
    json!({ "event": "clear", "streamSid": stream_sid }).to_string()
}

/// Escapes text for an XML attribute value.
pub fn xml_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c if (c as u32) < 0x20 && c != '\t' && c != '\n' && c != '\r' => {}
            c => out.push(c),
        }
    }
    out
}

/// TwiML connecting the call to a two-way Media Stream at `stream_url` (which must not carry a
/// query string: call data goes in `<Parameter>`s), hanging up once the stream closes.
pub fn connect_stream_twiml(stream_url: &str, parameters: &[(&str, &str)]) -> String {
    let mut xml = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Connect>");
    xml.push_str(&format!("<Stream url=\"{}\">", xml_escape(stream_url)));
    for (name, value) in parameters {
        xml.push_str(&format!(
            "<Parameter name=\"{}\" value=\"{}\"/>",
            xml_escape(name),
            xml_escape(value)
        ));
    }
    xml.push_str("</Stream></Connect><Hangup/></Response>");
    xml
}

/// TwiML that ends the call at once (a number that must not be called).
pub fn hangup_twiml() -> String {
    "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Hangup/></Response>".to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    const START: &str = r#"{"event":"start","sequenceNumber":"1","start":{"accountSid":"AC1","streamSid":"MZ1","callSid":"CA1","tracks":["inbound"],"mediaFormat":{"encoding":"audio/x-mulaw","sampleRate":8000,"channels":1},"customParameters":{"call_id":"c-1","to":"+8613800000000"}},"streamSid":"MZ1"}"#;

    #[test]
    fn parses_every_documented_event() {
        assert_eq!(
            parse_inbound(r#"{"event":"connected","protocol":"Call","version":"1.0.0"}"#),
            Ok(Inbound::Connected {
                protocol: "Call".into(),
                version: "1.0.0".into()
            })
        );
        let Ok(Inbound::Start(start)) = parse_inbound(START) else {
            panic!("start did not parse")
        };
        assert_eq!(start.stream_sid, "MZ1");
        assert_eq!(start.call_sid, "CA1");
        assert_eq!(start.account_sid, "AC1");
        assert_eq!(start.custom_parameters["call_id"], "c-1");
        assert_eq!(start.custom_parameters["to"], "+8613800000000");
        assert_eq!(
            parse_inbound(
                r#"{"event":"media","sequenceNumber":"3","media":{"track":"inbound","chunk":"1","timestamp":"5","payload":"//8A"},"streamSid":"MZ1"}"#
            ),
            Ok(Inbound::Media {
                stream_sid: "MZ1".into(),
                timestamp: Some(5),
                payload: vec![0xFF, 0xFF, 0x00]
            })
        );
        assert_eq!(
            parse_inbound(
                r#"{"event":"dtmf","streamSid":"MZ1","sequenceNumber":"5","dtmf":{"track":"inbound_track","digit":"1"}}"#
            ),
            Ok(Inbound::Dtmf { digit: '1' })
        );
        assert_eq!(
            parse_inbound(
                r#"{"event":"mark","sequenceNumber":"4","streamSid":"MZ1","mark":{"name":"7"}}"#
            ),
            Ok(Inbound::Mark { name: "7".into() })
        );
        assert_eq!(
            parse_inbound(
                r#"{"event":"stop","sequenceNumber":"5","streamSid":"MZ1","stop":{"accountSid":"AC1","callSid":"CA1"}}"#
            ),
            Ok(Inbound::Stop {
                call_sid: Some("CA1".into())
            })
        );
        assert_eq!(
            parse_inbound(r#"{"event":"transcription","x":1}"#),
            Ok(Inbound::Unknown {
                event: "transcription".into()
            })
        );
    }

    #[test]
    fn malformed_messages_are_errors_not_panics() {
        assert!(matches!(
            parse_inbound("{not json"),
            Err(ProtocolError::Json(_))
        ));
        assert!(matches!(parse_inbound("[]"), Err(ProtocolError::Json(_))));
        assert!(matches!(
            parse_inbound(r#"{"event":5}"#),
            Err(ProtocolError::Json(_))
        ));
        assert!(matches!(
            parse_inbound(r#"{"event":"media","streamSid":"MZ1"}"#),
            Err(ProtocolError::Malformed { .. })
        ));
        assert!(matches!(
            parse_inbound(r#"{"event":"media","media":{"payload":"***not base64"}}"#),
            Err(ProtocolError::Base64(_))
        ));
        assert!(matches!(
            parse_inbound(r#"{"event":"start","start":{"callSid":"CA1"}}"#),
            Err(ProtocolError::Malformed { .. })
        ));
        assert!(matches!(
            parse_inbound(
                r#"{"event":"start","streamSid":"MZ1","start":{"callSid":"CA1","mediaFormat":{"encoding":"audio/l16","sampleRate":16000,"channels":1}}}"#
            ),
            Err(ProtocolError::Format { .. })
        ));
        assert!(matches!(
            parse_inbound(r#"{"event":"dtmf","dtmf":{"digit":"12"}}"#),
            Err(ProtocolError::Malformed { .. })
        ));
        assert!(matches!(
            parse_inbound(r#"{"event":"mark","mark":{}}"#),
            Err(ProtocolError::Malformed { .. })
        ));
    }

    #[test]
    fn outbound_messages_have_the_documented_shape() {
        let media: serde_json::Value =
            serde_json::from_str(&media_message("MZ1", &[0xFF, 0xFF, 0x00])).unwrap();
        assert_eq!(
            media,
            json!({"event":"media","streamSid":"MZ1","media":{"payload":"//8A"}})
        );
        let mark: serde_json::Value = serde_json::from_str(&mark_message("MZ1", "3")).unwrap();
        assert_eq!(
            mark,
            json!({"event":"mark","streamSid":"MZ1","mark":{"name":"3"}})
        );
        let clear: serde_json::Value = serde_json::from_str(&clear_message("MZ1")).unwrap();
        assert_eq!(clear, json!({"event":"clear","streamSid":"MZ1"}));
    }

    #[test]
    fn twiml_connects_a_bidirectional_stream_with_escaped_parameters() {
        let xml = connect_stream_twiml(
            "wss://bot.example.com/media",
            &[("call_id", "c-1"), ("to", "+86138"), ("note", "a&b<\"c\">")],
        );
        assert_eq!(
            xml,
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Connect><Stream url=\"wss://bot.example.com/media\">\
             <Parameter name=\"call_id\" value=\"c-1\"/><Parameter name=\"to\" value=\"+86138\"/>\
             <Parameter name=\"note\" value=\"a&amp;b&lt;&quot;c&quot;&gt;\"/></Stream></Connect><Hangup/></Response>"
        );
        assert!(!xml.contains("<Start>"), "<Start><Stream> would be one-way");
    }
}
