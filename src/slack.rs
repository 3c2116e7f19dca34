//! Slack's wire formats: request signatures and Events API bodies, decoded into
//! the core's [`Delivery`] with slack-morphism's models.

use crate::model::{Delivery, Event, Message};
use crate::time::Micros;
use serde_json::Value;
use slack_morphism::events::{SlackEventCallbackBody, SlackMessageEvent};
use slack_morphism::signature_verifier::SlackEventSignatureVerifier;
use slack_morphism::{SlackReactionsItem, SlackSigningSecret};

/// What a verified Events API body asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum Body {
    /// Echo the challenge.
    UrlVerification(String),
    /// Apply this delivery.
    Event(Delivery),
    /// A well-formed envelope whose inner event is malformed: acknowledge, count, apply nothing.
    Rejected {
        /// The inner event's `type`, if it had one.
        kind: String,
        /// Why it was refused.
        reason: String,
    },
    /// `app_rate_limited` and other envelopes that carry nothing to apply.
    Notice(String),
}

/// Why a body is not an Events API body.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// Not JSON at all.
    #[error("invalid JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// JSON, but not an Events API envelope.
    #[error("not an Events API body: {0}")]
    NotEventsApi(String),
}

/// Why a request's signature was refused.
#[derive(Debug, thiserror::Error)]
pub enum SignatureError {
    /// A header is absent.
    #[error("missing {0} header")]
    Missing(&'static str),
    /// Wrong signature, malformed or stale timestamp.
    #[error("signature check failed: {0}")]
    Invalid(String),
}

/// Checks `X-Slack-Signature` over the raw body with slack-morphism's verifier
/// (HMAC-SHA256, constant-time compare, 5-minute window on the real clock).
pub fn verify_signature(
    secret: &str,
    signature: Option<&str>,
    timestamp: Option<&str>,
    body: &[u8],
) -> Result<(), SignatureError> {
    let signature = signature.ok_or(SignatureError::Missing("X-Slack-Signature"))?;
    let timestamp = timestamp.ok_or(SignatureError::Missing("X-Slack-Request-Timestamp"))?;
    // The verifier signs a &str; a body that is not UTF-8 cannot be a Slack body.
    let body = std::str::from_utf8(body)
        .map_err(|_| SignatureError::Invalid("body is not UTF-8".into()))?;
    SlackEventSignatureVerifier::new(&SlackSigningSecret::new(secret.to_string()))
        .verify(signature, body, timestamp)
        .map_err(|e| SignatureError::Invalid(format!("{e:?}")))
}

/// Decodes a raw Events API body.
pub fn decode(body: &[u8]) -> Result<Body, DecodeError> {
    let v: Value = serde_json::from_slice(body)?;
    decode_value(v)
}

/// Decodes an already-parsed Events API body (also used for Socket Mode payloads).
pub fn decode_value(v: Value) -> Result<Body, DecodeError> {
    let Some(obj) = v.as_object() else {
        return Err(DecodeError::NotEventsApi(
            "body is not a JSON object".into(),
        ));
    };
    match obj.get("type").and_then(Value::as_str) {
        Some("url_verification") => match obj.get("challenge").and_then(Value::as_str) {
            Some(c) => Ok(Body::UrlVerification(c.to_string())),
            None => Err(DecodeError::NotEventsApi(
                "url_verification without a challenge".into(),
            )),
        },
        Some("event_callback") => {
            let Some(event) = obj.get("event").filter(|e| e.is_object()) else {
                return Err(DecodeError::NotEventsApi(
                    "event_callback without an event object".into(),
                ));
            };
            Ok(decode_callback(obj, event))
        }
        Some("app_rate_limited") => Ok(Body::Notice("app_rate_limited".into())),
        Some(other) => Err(DecodeError::NotEventsApi(format!(
            "unknown envelope type {other:?}"
        ))),
        None => Err(DecodeError::NotEventsApi("missing envelope type".into())),
    }
}

// The envelope is read leniently from JSON (only `event`, `event_id`, `event_time`
// and `authorizations` matter); slack-morphism's `SlackPushEventCallback` would
// also demand `team_id` and `api_app_id`, which the engine has no use for.
fn decode_callback(envelope: &serde_json::Map<String, Value>, event: &Value) -> Body {
    let kind = event
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let event_id = envelope
        .get("event_id")
        .and_then(Value::as_str)
        .map(String::from);
    let event_time = envelope
        .get("event_time")
        .and_then(Value::as_i64)
        .map(|s| Micros(s.saturating_mul(1_000_000)));
    let bot_user = envelope
        .get("authorizations")
        .and_then(Value::as_array)
        .and_then(|a| {
            a.iter().find_map(|x| {
                (x.get("is_bot").and_then(Value::as_bool) == Some(true))
                    .then(|| x.get("user_id").and_then(Value::as_str).map(String::from))
                    .flatten()
            })
        });
    let reject = |reason: String| Body::Rejected {
        kind: kind.clone(),
        reason,
    };
    let parsed = match serde_json::from_value::<SlackEventCallbackBody>(event.clone()) {
        Ok(b) => b,
        Err(e) => return reject(e.to_string()),
    };
    let decoded = match parsed {
        SlackEventCallbackBody::Message(m) => message(&m, event),
        SlackEventCallbackBody::ReactionAdded(r) => {
            reaction(true, r.user.0, r.reaction.0, &r.item, &r.event_ts.0)
        }
        SlackEventCallbackBody::ReactionRemoved(r) => {
            reaction(false, r.user.0, r.reaction.0, &r.item, &r.event_ts.0)
        }
        SlackEventCallbackBody::MemberJoinedChannel(m) => Ok(Some(Event::Member {
            joined: true,
            user: m.user.0,
            channel: m.channel.0,
        })),
        SlackEventCallbackBody::MemberLeftChannel(m) => Ok(Some(Event::Member {
            joined: false,
            user: m.user.0,
            channel: m.channel.0,
        })),
        // slack-morphism files a known type whose shape it rejects under `Unknown`;
        // the member events' model insists on `channel_type` and `team`, which the
        // engine does not need, so those two are read here by hand.
        SlackEventCallbackBody::Unknown(raw) => match kind.as_str() {
            "member_joined_channel" | "member_left_channel" => member_by_hand(&kind, &raw),
            "message" | "reaction_added" | "reaction_removed" => {
                Err(format!("{kind} event does not have the expected shape"))
            }
            _ => Ok(None),
        },
        _ => Ok(None),
    };
    let event = match decoded {
        Ok(Some(e)) => e,
        Ok(None) => Event::Other { kind: kind.clone() },
        Err(reason) => return reject(reason),
    };
    let time = match &event {
        Event::Message(m) => Some(m.at),
        Event::Reaction { at, .. } => Some(*at),
        _ => None,
    }
    .or(event_time)
    .unwrap_or_default();
    Body::Event(Delivery {
        event_id,
        time,
        bot_user,
        event,
    })
}

fn message(m: &SlackMessageEvent, raw: &Value) -> Result<Option<Event>, String> {
    let channel = m
        .origin
        .channel
        .as_ref()
        .map(|c| c.0.clone())
        .ok_or("message without a channel")?;
    let subtype = raw.get("subtype").and_then(Value::as_str).map(String::from);
    match subtype.as_deref() {
        Some("message_changed") => {
            let inner = m
                .message
                .as_ref()
                .ok_or("message_changed without message")?;
            // `SlackMessageEventEdited` has no `subtype`, so the tombstone marker is
            // read from the raw payload.
            let tombstone =
                raw.pointer("/message/subtype").and_then(Value::as_str) == Some("tombstone");
            Ok(Some(Event::MessageChanged {
                channel,
                ts: inner.ts.0.clone(),
                text: inner
                    .content
                    .as_ref()
                    .and_then(|c| c.text.clone())
                    .unwrap_or_default(),
                user: inner.sender.user.as_ref().map(|u| u.0.clone()),
                tombstone,
            }))
        }
        Some("message_deleted") => {
            let ts = m
                .deleted_ts
                .as_ref()
                .map(|t| t.0.clone())
                .or_else(|| m.previous_message.as_ref().map(|p| p.ts.0.clone()))
                .ok_or("message_deleted without deleted_ts")?;
            Ok(Some(Event::MessageDeleted {
                channel,
                deleted_ts: ts,
            }))
        }
        _ => {
            let ts = m.origin.ts.0.clone();
            let at = Micros::from_slack_ts(&ts).map_err(|e| e.to_string())?;
            if let Some(t) = &m.origin.thread_ts {
                Micros::from_slack_ts(&t.0).map_err(|e| e.to_string())?;
            }
            Ok(Some(Event::Message(Message {
                channel,
                at,
                thread_ts: m.origin.thread_ts.as_ref().map(|t| t.0.clone()),
                user: m.sender.user.as_ref().map(|u| u.0.clone()),
                bot: m.sender.bot_id.is_some() || subtype.as_deref() == Some("bot_message"),
                subtype,
                text: m
                    .content
                    .as_ref()
                    .and_then(|c| c.text.clone())
                    .unwrap_or_default(),
                ts,
            })))
        }
    }
}

fn reaction(
    added: bool,
    user: String,
    reaction: String,
    item: &SlackReactionsItem,
    event_ts: &str,
) -> Result<Option<Event>, String> {
    let SlackReactionsItem::Message(msg) = item else {
        return Ok(None);
    };
    let channel = msg
        .origin
        .channel
        .as_ref()
        .map(|c| c.0.clone())
        .ok_or("reaction item without a channel")?;
    let at = Micros::from_slack_ts(event_ts).map_err(|e| e.to_string())?;
    Ok(Some(Event::Reaction {
        added,
        user,
        reaction,
        channel,
        item_ts: msg.origin.ts.0.clone(),
        at,
    }))
}

fn member_by_hand(kind: &str, raw: &Value) -> Result<Option<Event>, String> {
    let field = |k: &str| {
        raw.get(k)
            .and_then(Value::as_str)
            .map(String::from)
            .ok_or(format!("{kind} without {k}"))
    };
    Ok(Some(Event::Member {
        joined: kind == "member_joined_channel",
        user: field("user")?,
        channel: field("channel")?,
    }))
}
