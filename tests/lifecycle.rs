//! Unit tests of the ticket lifecycle (spec/lifecycle.md, rules R1–R12), one
//! group per rule, each test named after the rule and clause it checks.
//!
//! Expected values are written from the spec, not from the engine's output.

use seshat::engine::{Engine, Outcome, TicketQuery};
use seshat::model::{Config, Delivery, Event, LastBy, Message, Status, Ticket, TicketId, UserId};
use seshat::report::{LeaderEntry, UserRef, UserStats};
use seshat::time::{Micros, DAY, HOUR};

// ---------------------------------------------------------------- fixtures

/// First help channel (index 0).
const C: &str = "CHELP";
/// Second help channel (index 1).
const C2: &str = "CHELP2";
/// The team channel.
const TEAM: &str = "CTEAM";
/// A channel the engine does not watch.
const ELSEWHERE: &str = "CRANDOM";
/// 2026-01-01T00:00:00Z in microseconds.
const T0: i64 = 1_767_225_600_000_000;
const MIN: i64 = 60_000_000;

/// Slack `ts` of the instant `T0 + off` (microseconds).
fn ts(off: i64) -> String {
    let v = T0 + off;
    format!("{}.{:06}", v / 1_000_000, v % 1_000_000)
}

/// The instant `T0 + off`.
fn mic(off: i64) -> Micros {
    Micros(T0 + off)
}

/// Two help channels, a team channel, helpers H1 and H2, trusted bot UBOT.
fn config() -> Config {
    Config {
        help_channels: vec![C.into(), C2.into()],
        team_channel: Some(TEAM.into()),
        helpers: vec!["H1".into(), "H2".into()],
        trusted_bots: vec!["UBOT".into()],
        ..Config::default()
    }
}

fn engine() -> Engine {
    Engine::new(config())
}

fn stale_engine(days: u32) -> Engine {
    Engine::new(Config {
        stale_after_days: Some(days),
        ..config()
    })
}

fn delivery(time: Micros, event: Event) -> Delivery {
    Delivery {
        event_id: None,
        time,
        bot_user: None,
        event,
    }
}

fn message(channel: &str, ts: &str, thread_ts: Option<&str>, user: &str, text: &str) -> Delivery {
    let at = Micros::from_slack_ts(ts).expect("valid ts");
    delivery(
        at,
        Event::Message(Message {
            channel: channel.into(),
            ts: ts.into(),
            at,
            thread_ts: thread_ts.map(String::from),
            user: Some(user.into()),
            bot: false,
            subtype: None,
            text: text.into(),
        }),
    )
}

/// A top-level message.
fn msg(channel: &str, ts: &str, user: &str, text: &str) -> Delivery {
    message(channel, ts, None, user, text)
}

/// A thread reply.
fn reply(channel: &str, thread_ts: &str, ts: &str, user: &str, text: &str) -> Delivery {
    message(channel, ts, Some(thread_ts), user, text)
}

/// `reaction_added` of `reaction` at `event_ts`.
fn reaction(
    added: bool,
    channel: &str,
    item_ts: &str,
    user: &str,
    name: &str,
    event_ts: &str,
) -> Delivery {
    let at = Micros::from_slack_ts(event_ts).expect("valid ts");
    delivery(
        at,
        Event::Reaction {
            added,
            user: user.into(),
            reaction: name.into(),
            channel: channel.into(),
            item_ts: item_ts.into(),
            at,
        },
    )
}

/// `reaction_added` of the default resolution emoji.
fn react(channel: &str, item_ts: &str, user: &str, event_ts: &str) -> Delivery {
    reaction(true, channel, item_ts, user, "white_check_mark", event_ts)
}

/// `reaction_removed` of the default resolution emoji.
fn unreact(channel: &str, item_ts: &str, user: &str, event_ts: &str) -> Delivery {
    reaction(false, channel, item_ts, user, "white_check_mark", event_ts)
}

fn member(joined: bool, user: &str, channel: &str, time: Micros) -> Delivery {
    delivery(
        time,
        Event::Member {
            joined,
            user: user.into(),
            channel: channel.into(),
        },
    )
}

fn edit(channel: &str, ts: &str, user: &str, text: &str, time: Micros) -> Delivery {
    delivery(
        time,
        Event::MessageChanged {
            channel: channel.into(),
            ts: ts.into(),
            text: text.into(),
            user: Some(user.into()),
            tombstone: false,
        },
    )
}

fn tombstone(channel: &str, ts: &str, time: Micros) -> Delivery {
    delivery(
        time,
        Event::MessageChanged {
            channel: channel.into(),
            ts: ts.into(),
            text: "This message was deleted.".into(),
            user: None,
            tombstone: true,
        },
    )
}

fn delete(channel: &str, deleted_ts: &str, time: Micros) -> Delivery {
    delivery(
        time,
        Event::MessageDeleted {
            channel: channel.into(),
            deleted_ts: deleted_ts.into(),
        },
    )
}

fn other(kind: &str, time: Micros) -> Delivery {
    delivery(time, Event::Other { kind: kind.into() })
}

/// The same delivery with a `message` subtype.
fn with_subtype(mut d: Delivery, subtype: &str) -> Delivery {
    if let Event::Message(m) = &mut d.event {
        m.subtype = Some(subtype.into());
    }
    d
}

/// The same delivery flagged as a bot message (`bot_id` present).
fn as_bot(mut d: Delivery) -> Delivery {
    if let Event::Message(m) = &mut d.event {
        m.bot = true;
    }
    d
}

fn with_id(mut d: Delivery, id: &str) -> Delivery {
    d.event_id = Some(id.into());
    d
}

/// Applies every delivery and asserts each one changed the state.
fn apply_all(e: &mut Engine, ds: &[Delivery]) {
    for d in ds {
        assert_eq!(e.apply(d), Outcome::Applied, "{d:?}");
    }
}

/// The raw ticket with this id (panics if absent).
fn tk(e: &Engine, id: u64) -> Ticket {
    e.all_tickets()
        .find(|t| t.id == TicketId(id))
        .cloned()
        .unwrap_or_else(|| panic!("ticket {id} missing"))
}

/// Slack ids in user-id order.
fn user_ids(e: &Engine) -> Vec<String> {
    (1..)
        .map_while(|n| e.slack_id(UserId(n)).map(String::from))
        .collect()
}

/// The user id of a Slack user (panics if unknown).
fn uid(e: &Engine, slack: &str) -> UserId {
    let ix = user_ids(e)
        .iter()
        .position(|s| s == slack)
        .unwrap_or_else(|| panic!("{slack} has no id"));
    UserId(ix as u32 + 1)
}

fn uref(e: &Engine, slack: &str) -> Option<UserRef> {
    Some(UserRef {
        id: uid(e, slack).0,
        slack_id: slack.into(),
    })
}

fn leader(e: &Engine, slack: &str, count: u64) -> LeaderEntry {
    LeaderEntry {
        id: uid(e, slack).0,
        slack_id: slack.into(),
        count,
    }
}

fn statuses(e: &Engine) -> Vec<(u64, Status)> {
    e.all_tickets().map(|t| (t.id.0, t.status)).collect()
}

/// A fresh ticket as R1 describes it.
fn fresh(id: u64, channel: u16, off: i64, opener: UserId, title: &str, text: &str) -> Ticket {
    Ticket {
        id: TicketId(id),
        channel,
        message_ts: ts(off),
        title: title.into(),
        description: text.into(),
        status: Status::Open,
        opened_by: opener,
        assigned_to: None,
        closed_by: None,
        reopened_by: None,
        created_at: mic(off),
        assigned_at: None,
        closed_at: None,
        reopened_at: None,
        last_msg_at: mic(off),
        last_msg_by: LastBy::Author,
        tags: Vec::new(),
        others_replied: false,
    }
}

// ---------------------------------------------------------------- R1

#[test]
fn r1_top_level_message_creates_ticket() {
    let mut e = engine();
    let text = "\n  \nHow do I   set up <https://hackatime.hackclub.com|Hackatime>?\nmore";
    assert_eq!(e.apply(&msg(C, &ts(100), "U1", text)), Outcome::Applied);
    let t = tk(&e, 1);
    assert_eq!(
        t,
        fresh(1, 0, 100, UserId(1), "How do I set up Hackatime?", text)
    );
    let v = e.ticket(1, 0).expect("view");
    assert_eq!(v.id, 1);
    assert_eq!(v.status, "open");
    assert_eq!(v.channel, C);
    assert_eq!(v.message_ts, "1767225600.000100");
    assert_eq!(v.created_at, "2026-01-01T00:00:00.000100Z");
    assert_eq!(v.opened_by, uref(&e, "U1"));
    assert_eq!(v.assigned_to, None);
    assert_eq!(v.closed_by, None);
    assert_eq!(v.reopened_by, None);
    assert_eq!(v.assigned_at, None);
    assert_eq!(v.closed_at, None);
    assert_eq!(v.reopened_at, None);
    assert!(v.tags.is_empty());
    assert_eq!(user_ids(&e), ["U1"]);
}

#[test]
fn r1_ids_follow_creation_order_across_channels() {
    let mut e = engine();
    apply_all(
        &mut e,
        &[
            msg(C, &ts(0), "U1", "a"),
            msg(C2, &ts(MIN), "U2", "b"),
            // Same ts in another channel is another ticket.
            msg(C, &ts(MIN), "U1", "c"),
        ],
    );
    let got: Vec<(u64, u16, String)> = e
        .all_tickets()
        .map(|t| (t.id.0, t.channel, t.message_ts.clone()))
        .collect();
    assert_eq!(got, [(1, 0, ts(0)), (2, 1, ts(MIN)), (3, 0, ts(MIN))]);
    let c2 = e.scope(Some(C2)).expect("watched");
    assert!(e.ticket(1, c2).is_none());
    assert_eq!(e.ticket(2, c2).map(|v| v.channel), Some(C2.to_string()));
    assert_eq!(e.scope(Some(ELSEWHERE)), None);
}

#[test]
fn r1_thread_ts_equal_to_ts_is_top_level() {
    let mut e = engine();
    let d = message(C, &ts(0), Some(&ts(0)), "U1", "hello");
    assert_eq!(e.apply(&d), Outcome::Applied);
    assert_eq!(tk(&e, 1), fresh(1, 0, 0, UserId(1), "hello", "hello"));
}

#[test]
fn r1_file_share_and_me_message_create_tickets() {
    let mut e = engine();
    apply_all(
        &mut e,
        &[
            with_subtype(msg(C, &ts(0), "U1", "screenshot"), "file_share"),
            with_subtype(msg(C, &ts(1), "U2", "waves"), "me_message"),
        ],
    );
    assert_eq!(statuses(&e), [(1, Status::Open), (2, Status::Open)]);
    assert_eq!(tk(&e, 2).opened_by, UserId(2));
}

#[test]
fn r1_bot_and_other_subtypes_create_nothing() {
    let mut e = engine();
    let noise = [
        as_bot(msg(C, &ts(0), "U1", "bot with bot_id")),
        as_bot(with_subtype(msg(C, &ts(1), "U1", "bot"), "bot_message")),
        with_subtype(msg(C, &ts(2), "U1", "joined"), "channel_join"),
        with_subtype(msg(C, &ts(3), "U1", "left"), "channel_leave"),
        with_subtype(msg(C, &ts(4), "U1", "topic"), "channel_topic"),
        with_subtype(msg(C, &ts(5), "U1", "broadcast"), "thread_broadcast"),
        msg(ELSEWHERE, &ts(6), "U1", "not a help channel"),
    ];
    for d in &noise {
        assert_eq!(e.apply(d), Outcome::Ignored, "{d:?}");
    }
    assert_eq!(e.all_tickets().count(), 0);
    assert!(user_ids(&e).is_empty());
    assert_eq!(e.user("U1", 0), None);
    // The next ticket is still number 1.
    e.apply(&msg(C, &ts(7), "U2", "real"));
    assert_eq!(statuses(&e), [(1, Status::Open)]);
}

#[test]
fn r1_existing_ts_creates_nothing() {
    let mut e = engine();
    e.apply(&msg(C, &ts(0), "U1", "first"));
    assert_eq!(e.apply(&msg(C, &ts(0), "U2", "again")), Outcome::Ignored);
    assert_eq!(e.all_tickets().count(), 1);
    assert_eq!(tk(&e, 1).description, "first");
    assert_eq!(e.user("U2", 0), None);
}

// ---------------------------------------------------------------- R2

#[test]
fn r2_helper_reply_assigns_and_keeps_first_assigned_at() {
    let mut e = engine();
    let t0 = ts(0);
    apply_all(
        &mut e,
        &[
            msg(C, &t0, "U1", "help"),
            reply(C, &t0, &ts(10 * MIN), "H1", "looking"),
        ],
    );
    let mut want = fresh(1, 0, 0, UserId(1), "help", "help");
    want.status = Status::InProgress;
    want.assigned_to = Some(UserId(2));
    want.assigned_at = Some(mic(10 * MIN));
    want.last_msg_at = mic(10 * MIN);
    want.last_msg_by = LastBy::Helper;
    want.others_replied = true;
    assert_eq!(tk(&e, 1), want);

    // A second helper takes it over; the first assignment time is kept.
    e.apply(&reply(C, &t0, &ts(20 * MIN), "H2", "let me"));
    want.assigned_to = Some(UserId(3));
    want.last_msg_at = mic(20 * MIN);
    assert_eq!(tk(&e, 1), want);
    let v = e.ticket(1, 0).unwrap();
    assert_eq!(v.status, "in_progress");
    assert_eq!(v.assigned_to, uref(&e, "H2"));
    assert_eq!(v.assigned_at.as_deref(), Some("2026-01-01T00:10:00Z"));
}

#[test]
fn r2_opener_reply_is_author_and_other_reply_is_other() {
    let mut e = engine();
    let t0 = ts(0);
    e.apply(&msg(C, &t0, "U1", "help"));
    e.apply(&reply(C, &t0, &ts(MIN), "U1", "anyone?"));
    let t = tk(&e, 1);
    assert_eq!(
        (t.status, t.last_msg_at, t.last_msg_by, t.others_replied),
        (Status::Open, mic(MIN), LastBy::Author, false)
    );
    e.apply(&reply(C, &t0, &ts(2 * MIN), "U2", "same problem"));
    let t = tk(&e, 1);
    assert_eq!(
        (t.status, t.last_msg_at, t.last_msg_by, t.others_replied),
        (Status::Open, mic(2 * MIN), LastBy::Other, true)
    );
    assert_eq!((t.assigned_to, t.assigned_at), (None, None));
}

#[test]
fn r2_opener_who_is_helper_is_author_but_assigns() {
    let mut e = engine();
    let t0 = ts(0);
    e.apply(&msg(C, &t0, "H1", "helper asks"));
    e.apply(&reply(C, &t0, &ts(5 * MIN), "H1", "more detail"));
    let mut want = fresh(1, 0, 0, UserId(1), "helper asks", "helper asks");
    want.status = Status::InProgress;
    want.assigned_to = Some(UserId(1));
    want.assigned_at = Some(mic(5 * MIN));
    want.last_msg_at = mic(5 * MIN);
    want.last_msg_by = LastBy::Author;
    assert_eq!(tk(&e, 1), want);
}

#[test]
fn r2_late_reply_does_not_move_last_msg_back() {
    let mut e = engine();
    let t0 = ts(0);
    e.apply(&msg(C, &t0, "U1", "help"));
    e.apply(&reply(C, &t0, &ts(30 * MIN), "U2", "me too"));
    // A helper reply from earlier arrives late: it assigns, but last_msg_* stay.
    e.apply(&reply(C, &t0, &ts(10 * MIN), "H1", "hi"));
    let t = tk(&e, 1);
    assert_eq!(t.last_msg_at, mic(30 * MIN));
    assert_eq!(t.last_msg_by, LastBy::Other);
    assert_eq!(t.status, Status::InProgress);
    assert_eq!(t.assigned_to, Some(uid(&e, "H1")));
    assert_eq!(t.assigned_at, Some(mic(10 * MIN)));
    // An equal ts counts as the latest (ts ≥ old last_msg_at).
    e.apply(&reply(C, &t0, &ts(30 * MIN), "H2", "same instant"));
    let t = tk(&e, 1);
    assert_eq!(
        (t.last_msg_at, t.last_msg_by),
        (mic(30 * MIN), LastBy::Helper)
    );
    // An even later-arriving, even earlier helper reply keeps the first assignment time.
    e.apply(&reply(C, &t0, &ts(5 * MIN), "H1", "earlier still"));
    let t = tk(&e, 1);
    assert_eq!(t.assigned_to, Some(uid(&e, "H1")));
    assert_eq!(t.assigned_at, Some(mic(10 * MIN)));
    assert_eq!(
        (t.last_msg_at, t.last_msg_by),
        (mic(30 * MIN), LastBy::Helper)
    );
}

#[test]
fn r2_helper_reply_to_closed_ticket_does_not_assign() {
    let mut e = engine();
    let t0 = ts(0);
    e.apply(&msg(C, &t0, "U1", "help"));
    e.apply(&react(C, &t0, "U1", &ts(MIN)));
    assert_eq!(tk(&e, 1).status, Status::Closed);
    e.apply(&reply(C, &t0, &ts(2 * MIN), "H1", "late answer"));
    let t = tk(&e, 1);
    assert_eq!(t.status, Status::Closed);
    assert_eq!((t.assigned_to, t.assigned_at), (None, None));
    assert_eq!(
        (t.last_msg_at, t.last_msg_by),
        (mic(2 * MIN), LastBy::Helper)
    );
    assert_eq!(t.closed_by, Some(uid(&e, "U1")));
    assert_eq!(t.closed_at, Some(mic(MIN)));
}

#[test]
fn r2_broadcast_and_file_replies_count_bot_and_other_subtypes_do_not() {
    let mut e = engine();
    let t0 = ts(0);
    e.apply(&msg(C, &t0, "U1", "help"));
    for d in [
        as_bot(reply(C, &t0, &ts(MIN), "H1", "automated")),
        as_bot(with_subtype(
            reply(C, &t0, &ts(MIN), "H1", "bot"),
            "bot_message",
        )),
        with_subtype(reply(C, &t0, &ts(MIN), "H1", "joined"), "channel_join"),
        reply(C2, &t0, &ts(MIN), "H1", "same ts, other channel"),
        reply(C, &ts(1), &ts(MIN), "H1", "unknown thread"),
    ] {
        assert_eq!(e.apply(&d), Outcome::Ignored, "{d:?}");
    }
    assert_eq!(tk(&e, 1), fresh(1, 0, 0, UserId(1), "help", "help"));

    e.apply(&with_subtype(
        reply(C, &t0, &ts(2 * MIN), "U2", "file"),
        "file_share",
    ));
    assert_eq!(tk(&e, 1).last_msg_by, LastBy::Other);
    e.apply(&with_subtype(
        reply(C, &t0, &ts(3 * MIN), "H1", "also in channel"),
        "thread_broadcast",
    ));
    let t = tk(&e, 1);
    assert_eq!(t.status, Status::InProgress);
    assert_eq!(t.assigned_at, Some(mic(3 * MIN)));
    assert_eq!(
        (t.last_msg_at, t.last_msg_by),
        (mic(3 * MIN), LastBy::Helper)
    );
    e.apply(&with_subtype(
        reply(C, &t0, &ts(4 * MIN), "U1", "/me thanks"),
        "me_message",
    ));
    assert_eq!(tk(&e, 1).last_msg_by, LastBy::Author);
}

#[test]
fn r2_macro_is_not_a_reply() {
    let mut e = engine();
    let t0 = ts(0);
    e.apply(&msg(C, &t0, "U1", "help"));
    assert_eq!(
        e.apply(&reply(C, &t0, &ts(MIN), "H1", "?tag hackatime")),
        Outcome::Applied
    );
    let mut want = fresh(1, 0, 0, UserId(1), "help", "help");
    want.tags = vec!["hackatime".into()];
    assert_eq!(tk(&e, 1), want);
    // An unknown macro is neither a reply nor anything else.
    assert_eq!(
        e.apply(&reply(C, &t0, &ts(2 * MIN), "H2", "?whatever you say")),
        Outcome::Ignored
    );
    assert_eq!(tk(&e, 1), want);
    assert_eq!(e.user("H2", 0), None);
}

#[test]
fn r2_question_mark_from_non_helper_is_a_plain_reply() {
    let mut e = engine();
    let t0 = ts(0);
    e.apply(&msg(C, &t0, "U1", "help"));
    e.apply(&reply(C, &t0, &ts(MIN), "U2", "?resolve"));
    let t = tk(&e, 1);
    assert_eq!(t.status, Status::Open);
    assert_eq!((t.last_msg_at, t.last_msg_by), (mic(MIN), LastBy::Other));
    // Not even the opener resolves by macro (R2: only a helper sends macros).
    e.apply(&reply(C, &t0, &ts(2 * MIN), "U1", "?close"));
    let t = tk(&e, 1);
    assert_eq!(t.status, Status::Open);
    assert_eq!(
        (t.last_msg_at, t.last_msg_by),
        (mic(2 * MIN), LastBy::Author)
    );
}

#[test]
fn r2_macro_word_after_unicode_whitespace_and_repeated_question_marks() {
    let mut e = engine();
    for (i, text) in [
        "  \n\t?resolve",
        "\u{a0}\u{3000}?RESOLVE thanks",
        "??Close",
        "???faq see pinned",
    ]
    .iter()
    .enumerate()
    {
        let top = ts(i as i64 * HOUR);
        e.apply(&msg(C, &top, "U1", "q"));
        e.apply(&reply(C, &top, &ts(i as i64 * HOUR + MIN), "H1", text));
        let t = tk(&e, i as u64 + 1);
        assert_eq!(t.status, Status::Closed, "{text:?}");
        assert_eq!(t.closed_at, Some(mic(i as i64 * HOUR + MIN)), "{text:?}");
    }
    // `? resolve`: the first word is `?`, a macro with an empty name: nothing.
    let top = ts(10 * HOUR);
    e.apply(&msg(C, &top, "U1", "q"));
    assert_eq!(
        e.apply(&reply(C, &top, &ts(10 * HOUR + MIN), "H1", "? resolve")),
        Outcome::Ignored
    );
    // `?resolved` is another word.
    assert_eq!(
        e.apply(&reply(C, &top, &ts(10 * HOUR + 2 * MIN), "H1", "?resolved")),
        Outcome::Ignored
    );
    // A word that merely contains `?` later is a reply.
    e.apply(&reply(
        C,
        &top,
        &ts(10 * HOUR + 3 * MIN),
        "H1",
        "what? resolve",
    ));
    let t = tk(&e, 5);
    assert_eq!(t.status, Status::InProgress);
    assert_eq!(t.last_msg_at, mic(10 * HOUR + 3 * MIN));
}

// ---------------------------------------------------------------- R3

#[test]
fn r3_resolving_macros_and_case() {
    let mut e = engine();
    let names = [
        "resolve",
        "close",
        "faq",
        "identity",
        "fraud",
        "shipwrights",
        "hackatime",
        "thread",
        "RESOLVE",
        "Faq",
        "ThReAd",
    ];
    for (i, name) in names.iter().enumerate() {
        let off = i as i64 * HOUR;
        let top = ts(off);
        e.apply(&msg(C, &top, "U1", "q"));
        let d = reply(C, &top, &ts(off + MIN), "H1", &format!("?{name} done"));
        assert_eq!(e.apply(&d), Outcome::Applied, "{name}");
        let t = tk(&e, i as u64 + 1);
        assert_eq!(t.status, Status::Closed, "{name}");
        assert_eq!(t.closed_by, Some(uid(&e, "H1")), "{name}");
        assert_eq!(t.closed_at, Some(mic(off + MIN)), "{name}");
        // A macro is not a reply.
        assert_eq!((t.last_msg_at, t.last_msg_by), (mic(off), LastBy::Author));
        assert_eq!(t.assigned_to, None);
    }
}

#[test]
fn r3_configured_resolving_macros_replace_the_defaults() {
    let mut e = Engine::new(Config {
        resolving_macros: vec!["Done".into()],
        ..config()
    });
    let t0 = ts(0);
    e.apply(&msg(C, &t0, "U1", "q"));
    assert_eq!(
        e.apply(&reply(C, &t0, &ts(MIN), "H1", "?faq")),
        Outcome::Ignored
    );
    assert_eq!(tk(&e, 1).status, Status::Open);
    e.apply(&reply(C, &t0, &ts(2 * MIN), "H1", "?DONE"));
    assert_eq!(tk(&e, 1).status, Status::Closed);
    assert_eq!(tk(&e, 1).closed_at, Some(mic(2 * MIN)));
    // `resolve` and `close` always resolve.
    let t1 = ts(HOUR);
    e.apply(&msg(C, &t1, "U1", "q"));
    e.apply(&reply(C, &t1, &ts(HOUR + MIN), "H1", "?close"));
    assert_eq!(tk(&e, 2).status, Status::Closed);
}

#[test]
fn r3_reopen_macros() {
    let mut e = engine();
    let t0 = ts(0);
    e.apply(&msg(C, &t0, "U1", "q"));
    for (i, name) in ["reopen", "UNRESOLVE", "open"].iter().enumerate() {
        let off = (2 * i as i64 + 1) * MIN;
        e.apply(&reply(C, &t0, &ts(off), "H1", "?resolve"));
        assert_eq!(tk(&e, 1).status, Status::Closed);
        e.apply(&reply(C, &t0, &ts(off + MIN), "H2", &format!("?{name}")));
        let t = tk(&e, 1);
        assert_eq!(t.status, Status::Open, "{name}");
        assert_eq!(t.reopened_by, Some(uid(&e, "H2")), "{name}");
        assert_eq!(t.reopened_at, Some(mic(off + MIN)), "{name}");
        assert_eq!((t.closed_by, t.closed_at), (None, None), "{name}");
    }
}

#[test]
fn r3_tag_dedupes_case_insensitively_and_ignores_closed() {
    let mut e = engine();
    let t0 = ts(0);
    e.apply(&msg(C, &t0, "U1", "q"));
    e.apply(&reply(C, &t0, &ts(MIN), "H1", "?tag   Needs Review \n"));
    e.apply(&reply(C, &t0, &ts(2 * MIN), "H2", "?TAG Ärger"));
    assert_eq!(tk(&e, 1).tags, ["Needs Review", "Ärger"]);
    for text in [
        "?tag needs review",
        "?tag NEEDS REVIEW",
        "?tag ärger",
        "?tag",
        "?tag   ",
    ] {
        assert_eq!(
            e.apply(&reply(C, &t0, &ts(3 * MIN), "H1", text)),
            Outcome::Ignored,
            "{text:?}"
        );
    }
    assert_eq!(tk(&e, 1).tags, ["Needs Review", "Ärger"]);
    let v = e.ticket(1, 0).unwrap();
    assert_eq!(v.tags, ["Needs Review", "Ärger"]);
    assert_eq!(v.team_tags, ["Needs Review", "Ärger"]);
    // Closed: no new tags.
    e.apply(&reply(C, &t0, &ts(4 * MIN), "H1", "?resolve"));
    assert_eq!(
        e.apply(&reply(C, &t0, &ts(5 * MIN), "H1", "?tag later")),
        Outcome::Ignored
    );
    assert_eq!(tk(&e, 1).tags, ["Needs Review", "Ärger"]);
    // Reopened: tags again.
    e.apply(&reply(C, &t0, &ts(6 * MIN), "H1", "?reopen"));
    e.apply(&reply(C, &t0, &ts(7 * MIN), "H1", "?tag later"));
    assert_eq!(tk(&e, 1).tags, ["Needs Review", "Ärger", "later"]);
}

#[test]
fn r3_unknown_macro_does_nothing() {
    let mut e = engine();
    let t0 = ts(0);
    e.apply(&msg(C, &t0, "U1", "q"));
    let before = tk(&e, 1);
    for text in ["?assign H2", "?", "?? ", "?tags x"] {
        assert_eq!(
            e.apply(&reply(C, &t0, &ts(MIN), "H1", text)),
            Outcome::Ignored,
            "{text:?}"
        );
    }
    assert_eq!(tk(&e, 1), before);
    assert_eq!(user_ids(&e), ["U1"]);
}

// ---------------------------------------------------------------- R4

#[test]
fn r4_credit_rule_48h() {
    let mut e = engine();
    // Ticket 1: resolved exactly 48 h after the last message: the assignee is credited.
    let a = ts(0);
    e.apply(&msg(C, &a, "U1", "a"));
    e.apply(&reply(C, &a, &ts(HOUR), "H1", "on it"));
    e.apply(&reply(C, &a, &ts(HOUR + 48 * HOUR), "H2", "?resolve"));
    let t = tk(&e, 1);
    assert_eq!(t.status, Status::Closed);
    assert_eq!(t.closed_by, Some(uid(&e, "H1")));
    assert_eq!(t.closed_at, Some(mic(49 * HOUR)));
    assert_eq!(t.assigned_to, Some(uid(&e, "H1")));

    // Ticket 2: one microsecond later, the helper resolver is credited.
    let b = ts(1);
    e.apply(&msg(C, &b, "U1", "b"));
    e.apply(&reply(C, &b, &ts(HOUR), "H1", "on it"));
    e.apply(&reply(C, &b, &ts(49 * HOUR + 1), "H2", "?resolve"));
    let t = tk(&e, 2);
    assert_eq!(t.closed_by, Some(uid(&e, "H2")));
    assert_eq!(t.closed_at, Some(mic(49 * HOUR + 1)));

    // Ticket 3: no assignee: the resolver is credited, however late.
    let c = ts(2);
    e.apply(&msg(C, &c, "U1", "c"));
    e.apply(&reply(C, &c, &ts(100 * HOUR), "H2", "?close"));
    assert_eq!(tk(&e, 3).closed_by, Some(uid(&e, "H2")));

    // Ticket 4: any counted message (here another user's) restarts the 48 h.
    let d = ts(3);
    e.apply(&msg(C, &d, "U1", "d"));
    e.apply(&reply(C, &d, &ts(HOUR), "H1", "on it"));
    e.apply(&reply(C, &d, &ts(100 * HOUR), "U2", "bump"));
    e.apply(&reply(C, &d, &ts(101 * HOUR), "H2", "?resolve"));
    assert_eq!(tk(&e, 4).closed_by, Some(uid(&e, "H1")));

    // Ticket 5: a macro does not restart it.
    let f = ts(4);
    e.apply(&msg(C, &f, "U1", "f"));
    e.apply(&reply(C, &f, &ts(HOUR), "H1", "on it"));
    e.apply(&reply(C, &f, &ts(60 * HOUR), "H1", "?tag stuck"));
    e.apply(&reply(C, &f, &ts(60 * HOUR), "H2", "?resolve"));
    assert_eq!(tk(&e, 5).closed_by, Some(uid(&e, "H2")));

    let s = e.stats_v2(mic(200 * HOUR), 0);
    assert_eq!(
        s.all_time.helpers_leaderboard,
        [leader(&e, "H2", 3), leader(&e, "H1", 2)]
    );
    assert_eq!(
        e.user("H1", 0),
        Some(UserStats {
            tickets_opened: 0,
            tickets_closed: 2,
            helper: true
        })
    );
}

#[test]
fn r4_non_helper_resolver_credits_assignee() {
    let mut e = engine();
    // The opener resolves long after the helper's last message: the assignee is credited.
    let a = ts(0);
    e.apply(&msg(C, &a, "U1", "a"));
    e.apply(&reply(C, &a, &ts(HOUR), "H1", "try this"));
    e.apply(&react(C, &a, "U1", &ts(100 * HOUR)));
    let t = tk(&e, 1);
    assert_eq!(t.status, Status::Closed);
    assert_eq!(t.closed_by, Some(uid(&e, "H1")));
    assert_eq!(t.closed_at, Some(mic(100 * HOUR)));

    // No assignee: the opener is credited with their own ticket.
    let b = ts(1);
    e.apply(&msg(C, &b, "U1", "b"));
    e.apply(&react(C, &b, "U1", &ts(HOUR)));
    assert_eq!(tk(&e, 2).closed_by, Some(uid(&e, "U1")));

    // An assignee who has left the team is still credited by a non-helper resolver.
    let c = ts(2);
    e.apply(&msg(C, &c, "U1", "c"));
    e.apply(&reply(C, &c, &ts(HOUR), "H2", "hi"));
    e.apply(&member(false, "H2", TEAM, mic(2 * HOUR)));
    e.apply(&react(C, &c, "U1", &ts(100 * HOUR)));
    assert_eq!(tk(&e, 3).closed_by, Some(uid(&e, "H2")));

    // A closed ticket credited to its own opener is not in their tickets_closed.
    assert_eq!(
        e.user("U1", 0),
        Some(UserStats {
            tickets_opened: 3,
            tickets_closed: 0,
            helper: false
        })
    );
    assert_eq!(
        e.user("H1", 0),
        Some(UserStats {
            tickets_opened: 0,
            tickets_closed: 1,
            helper: true
        })
    );
}

#[test]
fn r4_trusted_bot_never_credited() {
    let mut e = Engine::new(Config {
        trusted_bots: vec!["UBOT".into(), "H2".into()],
        ..config()
    });
    // Assignee set, long after the last message: the assignee, not the bot.
    let a = ts(0);
    e.apply(&msg(C, &a, "U1", "a"));
    e.apply(&reply(C, &a, &ts(HOUR), "H1", "hi"));
    assert_eq!(
        e.apply(&react(C, &a, "UBOT", &ts(100 * HOUR))),
        Outcome::Applied
    );
    let t = tk(&e, 1);
    assert_eq!(t.status, Status::Closed);
    assert_eq!(t.closed_by, Some(uid(&e, "H1")));
    assert_eq!(t.closed_at, Some(mic(100 * HOUR)));

    // No assignee: closed, credited to nobody.
    let b = ts(1);
    e.apply(&msg(C, &b, "U1", "b"));
    assert_eq!(e.apply(&react(C, &b, "UBOT", &ts(HOUR))), Outcome::Applied);
    let t = tk(&e, 2);
    assert_eq!(t.status, Status::Closed);
    assert_eq!(t.closed_by, None);
    assert_eq!(t.closed_at, Some(mic(HOUR)));
    assert_eq!(e.ticket(2, 0).unwrap().closed_by, None);

    // A trusted bot that is also a helper is not credited either.
    let c = ts(2);
    e.apply(&msg(C, &c, "U1", "c"));
    e.apply(&react(C, &c, "H2", &ts(HOUR)));
    let t = tk(&e, 3);
    assert_eq!((t.status, t.closed_by), (Status::Closed, None));
    let d = ts(3);
    e.apply(&msg(C, &d, "U1", "d"));
    e.apply(&reply(C, &d, &ts(HOUR), "H1", "hi"));
    e.apply(&reply(C, &d, &ts(100 * HOUR), "H2", "?resolve"));
    assert_eq!(tk(&e, 4).closed_by, Some(uid(&e, "H1")));

    let s = e.stats_v2(mic(200 * HOUR), 0);
    assert_eq!(s.all_time.tickets_closed, 4);
    assert_eq!(s.all_time.helpers_leaderboard, [leader(&e, "H1", 2)]);
}

#[test]
fn r4_unpermitted_resolve_ignored() {
    let mut e = engine();
    let a = ts(0);
    e.apply(&msg(C, &a, "U1", "a"));
    e.apply(&reply(C, &a, &ts(HOUR), "H1", "hi"));
    let before = tk(&e, 1);
    let v = e.version();
    assert_eq!(
        e.apply(&react(C, &a, "U2", &ts(2 * HOUR))),
        Outcome::Ignored
    );
    assert_eq!(tk(&e, 1), before);
    assert_eq!(e.version(), v);
    assert_eq!(e.user("U2", 0), None);
    assert_eq!(user_ids(&e), ["U1", "H1"]);
}

#[test]
fn r4_resolving_a_closed_ticket_is_ignored() {
    let mut e = engine();
    let a = ts(0);
    e.apply(&msg(C, &a, "U1", "a"));
    e.apply(&reply(C, &a, &ts(HOUR), "H1", "?resolve"));
    let before = tk(&e, 1);
    assert_eq!(before.closed_by, Some(uid(&e, "H1")));
    assert_eq!(
        e.apply(&reply(C, &a, &ts(2 * HOUR), "H2", "?close")),
        Outcome::Ignored
    );
    assert_eq!(
        e.apply(&react(C, &a, "U1", &ts(3 * HOUR))),
        Outcome::Ignored
    );
    assert_eq!(tk(&e, 1), before);
    assert_eq!(e.user("H2", 0), None);
}

// ---------------------------------------------------------------- R5

#[test]
fn r5_reopen_keeps_assignment() {
    let mut e = engine();
    let a = ts(0);
    e.apply(&msg(C, &a, "U1", "a"));
    e.apply(&reply(C, &a, &ts(HOUR), "H1", "hi"));
    e.apply(&reply(C, &a, &ts(2 * HOUR), "H1", "?resolve"));
    e.apply(&reply(C, &a, &ts(3 * HOUR), "H2", "?reopen"));
    let mut want = fresh(1, 0, 0, UserId(1), "a", "a");
    want.status = Status::Open;
    want.assigned_to = Some(UserId(2));
    want.assigned_at = Some(mic(HOUR));
    want.reopened_by = Some(UserId(3));
    want.reopened_at = Some(mic(3 * HOUR));
    want.last_msg_at = mic(HOUR);
    want.last_msg_by = LastBy::Helper;
    want.others_replied = true;
    assert_eq!(tk(&e, 1), want);

    // Reopening an open ticket does nothing.
    assert_eq!(
        e.apply(&reply(C, &a, &ts(4 * HOUR), "H1", "?unresolve")),
        Outcome::Ignored
    );
    assert_eq!(tk(&e, 1), want);

    // The next helper reply puts it back in progress; the first assignment time stays.
    e.apply(&reply(C, &a, &ts(5 * HOUR), "H2", "back"));
    want.status = Status::InProgress;
    want.assigned_to = Some(UserId(3));
    want.last_msg_at = mic(5 * HOUR);
    assert_eq!(tk(&e, 1), want);
}

#[test]
fn r5_reopen_ignored_unless_closed_and_permitted() {
    let mut e = engine();
    let a = ts(0);
    e.apply(&msg(C, &a, "U1", "a"));
    // Not closed: the opener's reaction removal does nothing.
    assert_eq!(e.apply(&unreact(C, &a, "U1", &ts(MIN))), Outcome::Ignored);
    e.apply(&reply(C, &a, &ts(2 * MIN), "H1", "?resolve"));
    let closed = tk(&e, 1);
    // Someone who is neither helper, opener nor trusted bot cannot reopen.
    assert_eq!(
        e.apply(&unreact(C, &a, "U2", &ts(3 * MIN))),
        Outcome::Ignored
    );
    assert_eq!(tk(&e, 1), closed);
    assert_eq!(e.user("U2", 0), None);
    // The opener can.
    e.apply(&unreact(C, &a, "U1", &ts(4 * MIN)));
    let t = tk(&e, 1);
    assert_eq!(t.status, Status::Open);
    assert_eq!(t.reopened_by, Some(uid(&e, "U1")));
    assert_eq!(t.reopened_at, Some(mic(4 * MIN)));
    // So can a trusted bot.
    e.apply(&reply(C, &a, &ts(5 * MIN), "H1", "?resolve"));
    e.apply(&unreact(C, &a, "UBOT", &ts(6 * MIN)));
    let t = tk(&e, 1);
    assert_eq!(t.status, Status::Open);
    assert_eq!(t.reopened_by, Some(uid(&e, "UBOT")));
    assert_eq!(t.reopened_at, Some(mic(6 * MIN)));
}

// ---------------------------------------------------------------- R6

#[test]
fn r6_reaction_resolves_and_removal_reopens() {
    let mut e = engine();
    let a = ts(0);
    e.apply(&msg(C, &a, "U1", "a"));
    e.apply(&reply(C, &a, &ts(MIN), "H1", "fixed?"));
    // Resolved at the reaction's event_ts, by the reacting helper (credit: assignee, < 48 h).
    assert_eq!(
        e.apply(&react(C, &a, "H2", &ts(10 * MIN))),
        Outcome::Applied
    );
    let t = tk(&e, 1);
    assert_eq!(t.status, Status::Closed);
    assert_eq!(t.closed_by, Some(uid(&e, "H1")));
    assert_eq!(t.closed_at, Some(mic(10 * MIN)));
    assert_eq!(t.last_msg_at, mic(MIN));
    assert_eq!(user_ids(&e), ["U1", "H1", "H2"]);
    // Removal reopens at its event_ts, by the remover.
    assert_eq!(
        e.apply(&unreact(C, &a, "H2", &ts(20 * MIN))),
        Outcome::Applied
    );
    let t = tk(&e, 1);
    assert_eq!(t.status, Status::Open);
    assert_eq!((t.closed_by, t.closed_at), (None, None));
    assert_eq!(t.reopened_by, Some(uid(&e, "H2")));
    assert_eq!(t.reopened_at, Some(mic(20 * MIN)));
    assert_eq!(t.assigned_to, Some(uid(&e, "H1")));
}

#[test]
fn r6_other_emoji_and_reactions_on_replies_change_nothing() {
    let mut e = engine();
    let a = ts(0);
    let r = ts(MIN);
    e.apply(&msg(C, &a, "U1", "a"));
    e.apply(&reply(C, &a, &r, "U2", "me too"));
    let before = tk(&e, 1);
    for d in [
        reaction(true, C, &a, "H1", "heavy_check_mark", &ts(2 * MIN)),
        reaction(true, C, &a, "H1", "eyes", &ts(2 * MIN)),
        react(C, &r, "H1", &ts(2 * MIN)),
        react(C2, &a, "H1", &ts(2 * MIN)),
        react(ELSEWHERE, &a, "H1", &ts(2 * MIN)),
    ] {
        assert_eq!(e.apply(&d), Outcome::Ignored, "{d:?}");
    }
    assert_eq!(tk(&e, 1), before);
    assert_eq!(e.user("H1", 0), None);
}

#[test]
fn r6_configured_resolution_emoji() {
    let mut e = Engine::new(Config {
        resolution_reaction: "done".into(),
        ..config()
    });
    let a = ts(0);
    e.apply(&msg(C, &a, "U1", "a"));
    assert_eq!(e.apply(&react(C, &a, "H1", &ts(MIN))), Outcome::Ignored);
    e.apply(&reaction(true, C, &a, "H1", "done", &ts(2 * MIN)));
    assert_eq!(tk(&e, 1).status, Status::Closed);
    assert_eq!(tk(&e, 1).closed_at, Some(mic(2 * MIN)));
    e.apply(&reaction(false, C, &a, "H1", "done", &ts(3 * MIN)));
    assert_eq!(tk(&e, 1).status, Status::Open);
}

// ---------------------------------------------------------------- R7

#[test]
fn r7_delete_without_replies_removes_ticket_and_keeps_id_sequence() {
    let mut e = engine();
    let a = ts(0);
    let b = ts(MIN);
    e.apply(&msg(C, &a, "U1", "a"));
    e.apply(&msg(C, &b, "U2", "b"));
    // Only the opener replied: still withdrawn.
    e.apply(&reply(C, &a, &ts(2 * MIN), "U1", "nvm"));
    assert_eq!(e.apply(&delete(C, &a, mic(3 * MIN))), Outcome::Applied);
    assert!(e.ticket(1, 0).is_none());
    assert_eq!(statuses(&e), [(2, Status::Open)]);
    // Replies and reactions to the deleted thread change nothing.
    assert_eq!(
        e.apply(&reply(C, &a, &ts(4 * MIN), "H1", "hello?")),
        Outcome::Ignored
    );
    assert_eq!(e.apply(&react(C, &a, "H1", &ts(4 * MIN))), Outcome::Ignored);
    // The next ticket gets id 3, not 1 or 2.
    e.apply(&msg(C, &ts(5 * MIN), "U3", "c"));
    assert_eq!(statuses(&e), [(2, Status::Open), (3, Status::Open)]);
    let s = e.stats_v2(mic(HOUR), 0);
    assert_eq!(s.all_time.tickets_total, 2);
    assert_eq!(s.all_time.tickets_open, 2);
    assert_eq!(s.past_24h.new_tickets_total, 2);
    assert_eq!(
        s.all_time.oldest_unanswered_ticket.as_ref().map(|o| o.id),
        Some(2)
    );
    let ids: Vec<u64> = e
        .tickets(TicketQuery::default(), 0)
        .iter()
        .map(|v| v.id)
        .collect();
    assert_eq!(ids, [2, 3]);
    // The opener keeps their id, with no tickets.
    assert_eq!(
        e.user("U1", 0),
        Some(UserStats {
            tickets_opened: 0,
            tickets_closed: 0,
            helper: false
        })
    );
}

#[test]
fn r7_delete_with_helper_reply_keeps_ticket() {
    let mut e = engine();
    let a = ts(0);
    e.apply(&msg(C, &a, "U1", "a"));
    e.apply(&reply(C, &a, &ts(MIN), "H1", "hi"));
    let before = tk(&e, 1);
    assert_eq!(e.apply(&delete(C, &a, mic(2 * MIN))), Outcome::Ignored);
    assert_eq!(tk(&e, 1), before);
    assert_eq!(e.stats_v2(mic(HOUR), 0).all_time.tickets_in_progress, 1);
}

#[test]
fn r7_delete_with_other_reply_keeps_ticket() {
    let mut e = engine();
    let a = ts(0);
    e.apply(&msg(C, &a, "U1", "a"));
    e.apply(&reply(C, &a, &ts(MIN), "U2", "same here"));
    let before = tk(&e, 1);
    assert_eq!(e.apply(&delete(C, &a, mic(2 * MIN))), Outcome::Ignored);
    assert_eq!(tk(&e, 1), before);
}

#[test]
fn r7_macros_and_bot_replies_do_not_keep_a_ticket() {
    let mut e = engine();
    let a = ts(0);
    e.apply(&msg(C, &a, "U1", "a"));
    e.apply(&reply(C, &a, &ts(MIN), "H1", "?tag spam"));
    e.apply(&as_bot(reply(C, &a, &ts(2 * MIN), "UBOT", "auto reply")));
    assert_eq!(e.apply(&delete(C, &a, mic(3 * MIN))), Outcome::Applied);
    assert_eq!(e.all_tickets().count(), 0);
}

#[test]
fn r7_deleting_a_reply_changes_nothing() {
    let mut e = engine();
    let a = ts(0);
    let r = ts(MIN);
    e.apply(&msg(C, &a, "U1", "a"));
    e.apply(&reply(C, &a, &r, "U1", "more"));
    let before = tk(&e, 1);
    assert_eq!(e.apply(&delete(C, &r, mic(2 * MIN))), Outcome::Ignored);
    assert_eq!(e.apply(&tombstone(C, &r, mic(2 * MIN))), Outcome::Ignored);
    assert_eq!(e.apply(&delete(C2, &a, mic(2 * MIN))), Outcome::Ignored);
    assert_eq!(tk(&e, 1), before);
}

#[test]
fn r7_tombstone() {
    let mut e = engine();
    let a = ts(0);
    let b = ts(1);
    e.apply(&msg(C, &a, "U1", "a"));
    e.apply(&msg(C, &b, "U1", "b"));
    e.apply(&reply(C, &b, &ts(MIN), "U2", "answer"));
    // No replies: a tombstone withdraws the ticket.
    assert_eq!(e.apply(&tombstone(C, &a, mic(2 * MIN))), Outcome::Applied);
    // A reply by someone else: kept unchanged (the tombstone text is not an edit).
    let before = tk(&e, 2);
    assert_eq!(e.apply(&tombstone(C, &b, mic(2 * MIN))), Outcome::Ignored);
    assert_eq!(statuses(&e), [(2, Status::Open)]);
    assert_eq!(tk(&e, 2), before);
    assert_eq!(tk(&e, 2).description, "b");
}

// ---------------------------------------------------------------- R8

#[test]
fn r8_edit_rederives_title() {
    let mut e = engine();
    let a = ts(0);
    e.apply(&msg(C, &a, "U1", "old"));
    e.apply(&reply(C, &a, &ts(MIN), "H1", "hi"));
    let text = " \n\u{2003}<@U9|bob> &amp;  <#C5|general>: <!here> &lt;3\nsecond line";
    assert_eq!(
        e.apply(&edit(C, &a, "U1", text, mic(2 * MIN))),
        Outcome::Applied
    );
    let t = tk(&e, 1);
    assert_eq!(t.title, "@bob & #general: @here <3");
    assert_eq!(t.description, text);
    // Nothing else moves.
    assert_eq!(t.status, Status::InProgress);
    assert_eq!((t.last_msg_at, t.last_msg_by), (mic(MIN), LastBy::Helper));
    assert_eq!(t.created_at, mic(0));
    // An empty edit gives `(no text)`; a long one is cut at 80 characters.
    e.apply(&edit(C, &a, "U1", "", mic(3 * MIN)));
    assert_eq!(tk(&e, 1).title, "(no text)");
    let long = "é".repeat(81);
    e.apply(&edit(C, &a, "U1", &long, mic(4 * MIN)));
    assert_eq!(tk(&e, 1).title, format!("{}…", "é".repeat(80)));
    assert_eq!(e.ticket(1, 0).unwrap().description, long);
}

#[test]
fn r8_edit_of_a_reply_or_elsewhere_changes_nothing() {
    let mut e = engine();
    let a = ts(0);
    let r = ts(MIN);
    e.apply(&msg(C, &a, "U1", "a"));
    e.apply(&reply(C, &a, &r, "U2", "reply"));
    let before = tk(&e, 1);
    for d in [
        edit(C, &r, "U2", "edited reply", mic(2 * MIN)),
        edit(C2, &a, "U1", "other channel", mic(2 * MIN)),
        edit(ELSEWHERE, &a, "U1", "not watched", mic(2 * MIN)),
    ] {
        assert_eq!(e.apply(&d), Outcome::Ignored, "{d:?}");
    }
    assert_eq!(tk(&e, 1), before);
}

// ---------------------------------------------------------------- R9

#[test]
fn r9_helper_join_leave_changes_leaderboard_not_tickets() {
    let mut e = engine();
    let a = ts(0);
    e.apply(&msg(C, &a, "U1", "a"));
    // Not yet a helper: an `other` reply, no assignment.
    e.apply(&reply(C, &a, &ts(MIN), "H3", "hmm"));
    assert_eq!(tk(&e, 1).last_msg_by, LastBy::Other);
    assert_eq!(tk(&e, 1).status, Status::Open);
    // Joining the team channel makes a helper; the past reply is not rewritten.
    assert_eq!(
        e.apply(&member(true, "H3", TEAM, mic(2 * MIN))),
        Outcome::Applied
    );
    assert_eq!(tk(&e, 1).last_msg_by, LastBy::Other);
    assert_eq!(tk(&e, 1).status, Status::Open);
    e.apply(&reply(C, &a, &ts(3 * MIN), "H3", "try this"));
    e.apply(&reply(C, &a, &ts(4 * MIN), "H3", "?resolve"));
    let closed = tk(&e, 1);
    assert_eq!(closed.closed_by, Some(uid(&e, "H3")));
    assert_eq!(closed.assigned_at, Some(mic(3 * MIN)));
    let board = |e: &mut Engine| e.stats_v2(mic(HOUR), 0).all_time.helpers_leaderboard;
    assert_eq!(board(&mut e), [leader(&e, "H3", 1)]);
    assert_eq!(
        e.stats_v2(mic(HOUR), 0).past_24h.helpers_leaderboard,
        [leader(&e, "H3", 1)]
    );

    // Leaving: the ticket keeps its fields, the leaderboard drops the user.
    assert_eq!(
        e.apply(&member(false, "H3", TEAM, mic(5 * MIN))),
        Outcome::Applied
    );
    assert_eq!(tk(&e, 1), closed);
    assert!(board(&mut e).is_empty());
    assert!(e
        .stats_v2(mic(HOUR), 0)
        .past_24h
        .helpers_leaderboard
        .is_empty());
    assert_eq!(
        e.user("H3", 0),
        Some(UserStats {
            tickets_opened: 0,
            tickets_closed: 1,
            helper: false
        })
    );
    assert_eq!(e.helpers(), ["H1", "H2"]);
    // Rejoining brings the entry back.
    e.apply(&member(true, "H3", TEAM, mic(6 * MIN)));
    assert_eq!(board(&mut e), [leader(&e, "H3", 1)]);
    assert_eq!(e.user("H3", 0).map(|u| u.helper), Some(true));
}

#[test]
fn r9_membership_of_other_channels_is_ignored() {
    let mut e = engine();
    for d in [
        member(true, "U5", C, mic(0)),
        member(true, "U5", ELSEWHERE, mic(0)),
        member(false, "H1", C, mic(0)),
        // Already a helper / not a helper: no change.
        member(true, "H1", TEAM, mic(0)),
        member(false, "U6", TEAM, mic(0)),
    ] {
        assert_eq!(e.apply(&d), Outcome::Ignored, "{d:?}");
    }
    assert_eq!(e.helpers(), ["H1", "H2"]);
    // Roster events give no user ids.
    assert!(user_ids(&e).is_empty());
}

#[test]
fn r9_bot_user_is_never_helper() {
    // Known from configuration.
    let mut e = Engine::new(Config {
        helpers: vec!["H1".into(), "UB".into()],
        bot_user: Some("UB".into()),
        ..config()
    });
    assert_eq!(e.helpers(), ["H1"]);
    let a = ts(0);
    e.apply(&msg(C, &a, "U1", "a"));
    e.apply(&reply(C, &a, &ts(MIN), "UB", "I am the bot's user"));
    let t = tk(&e, 1);
    assert_eq!(t.last_msg_by, LastBy::Other);
    assert_eq!((t.status, t.assigned_to), (Status::Open, None));
    // Its `?resolve` is a plain reply, and it may not resolve by reaction.
    e.apply(&reply(C, &a, &ts(2 * MIN), "UB", "?resolve"));
    assert_eq!(e.apply(&react(C, &a, "UB", &ts(3 * MIN))), Outcome::Ignored);
    assert_eq!(tk(&e, 1).status, Status::Open);
    assert_eq!(e.user("UB", 0).map(|u| u.helper), Some(false));
    // Joining the team channel does not make it a helper either.
    e.apply(&member(true, "UB", TEAM, mic(4 * MIN)));
    e.apply(&reply(C, &a, &ts(5 * MIN), "UB", "still not"));
    assert_eq!(tk(&e, 1).last_msg_by, LastBy::Other);
    assert_eq!(e.helpers(), ["H1"]);

    // Learnt from a delivery's authorizations.
    let mut e = engine();
    e.apply(&msg(C, &a, "U1", "a"));
    e.apply(&reply(C, &a, &ts(MIN), "H2", "?resolve"));
    assert_eq!(
        e.stats_v2(mic(HOUR), 0).all_time.helpers_leaderboard,
        [leader(&e, "H2", 1)]
    );
    let mut d = other("app_mention", mic(2 * MIN));
    d.bot_user = Some("H2".into());
    e.apply(&d);
    assert_eq!(e.helpers(), ["H1"]);
    assert_eq!(e.user("H2", 0).map(|u| u.helper), Some(false));
    assert!(e
        .stats_v2(mic(HOUR), 0)
        .all_time
        .helpers_leaderboard
        .is_empty());
    let b = ts(3 * MIN);
    e.apply(&msg(C, &b, "U1", "b"));
    e.apply(&reply(C, &b, &ts(4 * MIN), "H2", "hello"));
    let t = tk(&e, 2);
    assert_eq!((t.status, t.last_msg_by), (Status::Open, LastBy::Other));
}

// ---------------------------------------------------------------- R10

#[test]
fn r10_stale_close_at_exact_instant_before_later_event() {
    let mut e = stale_engine(7);
    let a = ts(0);
    let b = ts(1_000_000);
    e.apply(&msg(C, &a, "U1", "a"));
    e.apply(&msg(C, &b, "U2", "b"));
    // One microsecond before the stale instant: still open.
    e.apply(&other("noise", mic(7 * DAY - 1)));
    assert_eq!(statuses(&e), [(1, Status::Open), (2, Status::Open)]);
    // A helper reply exactly at s finds ticket 1 closed (by its opener, no assignee).
    e.apply(&reply(C, &a, &ts(7 * DAY), "H1", "sorry, late"));
    let t = tk(&e, 1);
    assert_eq!(t.status, Status::Closed);
    assert_eq!(t.closed_by, Some(uid(&e, "U1")));
    assert_eq!(t.closed_at, Some(mic(7 * DAY)));
    assert_eq!((t.assigned_to, t.assigned_at), (None, None));
    assert_eq!(
        (t.last_msg_at, t.last_msg_by),
        (mic(7 * DAY), LastBy::Helper)
    );
    // Ticket 2 (s = 7 d + 1 s) is answered just in time: assigned, clock restarts.
    e.apply(&reply(C, &b, &ts(7 * DAY + 1_000_000 - 1), "H1", "here"));
    let t = tk(&e, 2);
    assert_eq!(t.status, Status::InProgress);
    assert_eq!(t.assigned_at, Some(mic(7 * DAY + 1_000_000 - 1)));
    let s2 = 14 * DAY + 1_000_000 - 1;
    e.apply(&other("noise", mic(s2 - 1)));
    assert_eq!(tk(&e, 2).status, Status::InProgress);
    // Then closed at its new stale instant, credited to the assignee.
    e.apply(&react(C, &b, "H2", &ts(s2 + 5)));
    let t = tk(&e, 2);
    assert_eq!(t.status, Status::Closed);
    assert_eq!(t.closed_by, Some(uid(&e, "H1")));
    assert_eq!(t.closed_at, Some(mic(s2)));
}

#[test]
fn r10_stale_close_credits_assignee_even_after_leaving() {
    let mut e = stale_engine(2);
    let a = ts(0);
    e.apply(&msg(C, &a, "U1", "a"));
    e.apply(&reply(C, &a, &ts(HOUR), "H1", "hi"));
    e.apply(&reply(C, &a, &ts(2 * HOUR), "U1", "still broken"));
    e.apply(&member(false, "H1", TEAM, mic(3 * HOUR)));
    e.apply(&other("noise", mic(2 * HOUR + 2 * DAY)));
    let t = tk(&e, 1);
    assert_eq!(t.status, Status::Closed);
    assert_eq!(t.closed_by, Some(uid(&e, "H1")));
    assert_eq!(t.closed_at, Some(mic(2 * HOUR + 2 * DAY)));
}

#[test]
fn r10_reopen_restarts_stale_clock() {
    let mut e = stale_engine(7);
    let a = ts(0);
    e.apply(&msg(C, &a, "U1", "a"));
    e.apply(&reply(C, &a, &ts(HOUR), "H1", "hi"));
    e.apply(&reply(C, &a, &ts(2 * HOUR), "H1", "?resolve"));
    // Closed tickets never go stale.
    e.apply(&other("noise", mic(10 * DAY - 1)));
    assert_eq!(tk(&e, 1).closed_at, Some(mic(2 * HOUR)));
    e.apply(&reply(C, &a, &ts(10 * DAY), "H2", "?reopen"));
    // s = max(last_msg_at = 1 h, reopened_at = 10 d) + 7 d.
    e.apply(&other("noise", mic(17 * DAY - 1)));
    assert_eq!(tk(&e, 1).status, Status::Open);
    e.apply(&other("noise", mic(17 * DAY)));
    let t = tk(&e, 1);
    assert_eq!(t.status, Status::Closed);
    assert_eq!(t.closed_by, Some(uid(&e, "H1")));
    assert_eq!(t.closed_at, Some(mic(17 * DAY)));
    assert_eq!(t.reopened_by, Some(uid(&e, "H2")));
    assert_eq!(t.reopened_at, Some(mic(10 * DAY)));
}

#[test]
fn r10_fixed_now_includes_stale_closes() {
    let mut e = stale_engine(7);
    let a = ts(0);
    e.apply(&msg(C, &a, "U1", "a"));
    e.apply(&reply(C, &a, &ts(HOUR), "H1", "hi"));
    let s = 7 * DAY + HOUR;
    let st = e.stats_v2(mic(s - 1), 0);
    assert_eq!(
        (st.all_time.tickets_in_progress, st.all_time.tickets_closed),
        (1, 0)
    );
    let st = e.stats_v2(mic(s), 0);
    assert_eq!(
        (st.all_time.tickets_in_progress, st.all_time.tickets_closed),
        (0, 1)
    );
    assert_eq!(st.all_time.helpers_leaderboard, [leader(&e, "H1", 1)]);
    // closed_at = now is not in [now − 24 h, now).
    assert_eq!(st.past_24h.closed_today, 0);
    let v = e.ticket(1, 0).unwrap();
    assert_eq!(v.status, "closed");
    assert_eq!(v.closed_at.as_deref(), Some("2026-01-08T01:00:00Z"));
    assert_eq!(v.closed_by, uref(&e, "H1"));
    let st = e.stats_v2(mic(s + HOUR), 0);
    assert_eq!(st.past_24h.closed_today, 1);
    assert_eq!(st.past_24h.helpers_leaderboard, [leader(&e, "H1", 1)]);
    assert_eq!(
        st.all_time.mean_resolution_time_minutes,
        Some((s as f64) / MIN as f64)
    );
    // Part of the state from then on: a later reply finds it closed.
    e.apply(&reply(C, &a, &ts(s + 2 * HOUR), "H2", "anything else?"));
    let t = tk(&e, 1);
    assert_eq!(t.status, Status::Closed);
    assert_eq!(t.assigned_to, Some(uid(&e, "H1")));
}

#[test]
fn r10_disabled_by_default() {
    let mut e = engine();
    let a = ts(0);
    e.apply(&msg(C, &a, "U1", "a"));
    e.apply(&other("noise", mic(365 * DAY)));
    let st = e.stats_v2(mic(400 * DAY), 0);
    assert_eq!(st.all_time.tickets_open, 1);
    assert_eq!(tk(&e, 1).status, Status::Open);
}

#[test]
fn r10_noise_and_ignored_deliveries_move_the_stale_clock() {
    let mut e = stale_engine(1);
    let a = ts(0);
    let b = ts(1);
    e.apply(&msg(C, &a, "U1", "a"));
    e.apply(&msg(C, &b, "U1", "b"));
    // A bot message in another channel at s closes ticket 1 at s.
    e.apply(&as_bot(msg(ELSEWHERE, &ts(DAY), "UX", "bot")));
    assert_eq!(tk(&e, 1).closed_at, Some(mic(DAY)));
    assert_eq!(tk(&e, 1).closed_by, Some(uid(&e, "U1")));
    assert_eq!(tk(&e, 2).status, Status::Open);
    // A roster change at time ≥ s of ticket 2 closes it too.
    e.apply(&member(true, "U9", ELSEWHERE, mic(DAY + 1)));
    assert_eq!(tk(&e, 2).closed_at, Some(mic(DAY + 1)));
    assert_eq!(user_ids(&e), ["U1"]);
}

// ---------------------------------------------------------------- R11

#[test]
fn r11_duplicate_event_id_ignored() {
    let mut e = engine();
    let a = ts(0);
    let first = with_id(msg(C, &a, "U1", "a"), "Ev1");
    assert_eq!(e.apply(&first), Outcome::Applied);
    assert_eq!(e.apply(&first), Outcome::Duplicate);
    let r = with_id(reply(C, &a, &ts(MIN), "H1", "hi"), "Ev2");
    assert_eq!(e.apply(&r), Outcome::Applied);
    let before = tk(&e, 1);
    let v = e.version();
    // A retry is ignored even if its payload differs.
    assert_eq!(
        e.apply(&with_id(
            reply(C, &a, &ts(2 * MIN), "H2", "?resolve"),
            "Ev2"
        )),
        Outcome::Duplicate
    );
    assert_eq!(
        e.apply(&with_id(msg(C, &ts(3 * MIN), "U2", "b"), "Ev1")),
        Outcome::Duplicate
    );
    assert_eq!(tk(&e, 1), before);
    assert_eq!(e.all_tickets().count(), 1);
    assert_eq!(e.version(), v);
    assert_eq!(e.user("H2", 0), None);
    // An ignored delivery's id is remembered too.
    let noise = with_id(other("noise", mic(4 * MIN)), "Ev3");
    assert_eq!(e.apply(&noise), Outcome::Ignored);
    assert_eq!(e.apply(&noise), Outcome::Duplicate);
}

#[test]
fn r11_noise_changes_nothing() {
    let mut e = engine();
    let a = ts(0);
    let r = ts(MIN);
    e.apply(&msg(C, &a, "U1", "a"));
    e.apply(&reply(C, &a, &r, "U2", "me too"));
    let before: Vec<Ticket> = e.all_tickets().cloned().collect();
    let v = e.version();
    let noise = [
        as_bot(msg(C, &ts(2 * MIN), "UX", "bot top-level")),
        as_bot(reply(C, &a, &ts(2 * MIN), "UX", "bot reply")),
        as_bot(with_subtype(msg(C, &ts(2 * MIN), "UX", "x"), "bot_message")),
        with_subtype(msg(C, &ts(2 * MIN), "UX", "x"), "channel_join"),
        with_subtype(reply(C, &a, &ts(2 * MIN), "UX", "x"), "channel_join"),
        with_subtype(reply(C, &a, &ts(2 * MIN), "UX", "x"), "pinned_item"),
        msg(ELSEWHERE, &ts(2 * MIN), "UX", "other channel"),
        reply(ELSEWHERE, &a, &ts(2 * MIN), "UX", "other channel thread"),
        reply(C, &ts(12_345), &ts(2 * MIN), "UX", "unknown thread"),
        react(C, &r, "U1", &ts(2 * MIN)),
        react(C, &ts(999), "U1", &ts(2 * MIN)),
        other("app_home_opened", mic(2 * MIN)),
        member(true, "UX", ELSEWHERE, mic(2 * MIN)),
        delete(C, &ts(999), mic(2 * MIN)),
        edit(C, &ts(999), "UX", "x", mic(2 * MIN)),
        // An edit that does not change the text.
        edit(C, &a, "U1", "a", mic(2 * MIN)),
    ];
    for d in &noise {
        assert_eq!(e.apply(d), Outcome::Ignored, "{d:?}");
    }
    let after: Vec<Ticket> = e.all_tickets().cloned().collect();
    assert_eq!(after, before);
    assert_eq!(e.version(), v);
    assert_eq!(user_ids(&e), ["U1", "U2"]);
    assert_eq!(e.user("UX", 0), None);
}

// ---------------------------------------------------------------- R12 and user ids

#[test]
fn r12_user_ids_in_order_of_first_appearance_actor_before_credited() {
    let mut e = engine();
    let a = ts(0);
    let b = ts(1);
    apply_all(
        &mut e,
        &[
            msg(C, &a, "U1", "a"),
            reply(C, &a, &ts(MIN), "H2", "hi"),
            // H1 resolves; H2 (assignee, < 48 h) is credited.
            react(C, &a, "H1", &ts(2 * MIN)),
            msg(C2, &b, "U3", "b"),
            reply(C2, &b, &ts(3 * MIN), "U4", "+1"),
            reply(C2, &b, &ts(4 * MIN), "H3", "?tag x"), // not a helper: a reply
            unreact(C, &a, "UBOT", &ts(5 * MIN)),
        ],
    );
    assert_eq!(user_ids(&e), ["U1", "H2", "H1", "U3", "U4", "H3", "UBOT"]);
    let v = e.ticket(1, 0).unwrap();
    assert_eq!(
        v.opened_by,
        Some(UserRef {
            id: 1,
            slack_id: "U1".into()
        })
    );
    assert_eq!(
        v.assigned_to,
        Some(UserRef {
            id: 2,
            slack_id: "H2".into()
        })
    );
    assert_eq!(
        v.reopened_by,
        Some(UserRef {
            id: 7,
            slack_id: "UBOT".into()
        })
    );
    // Credited users who already appeared keep their ids.
    e.apply(&reply(C, &a, &ts(6 * MIN), "H1", "?close"));
    assert_eq!(tk(&e, 1).closed_by, Some(UserId(2)));
    assert_eq!(user_ids(&e).len(), 7);
}

#[test]
fn r12_config_roster_and_ignored_events_give_no_id() {
    let mut e = engine();
    let a = ts(0);
    e.apply(&member(true, "H9", TEAM, mic(0)));
    e.apply(&msg(C, &a, "U1", "a"));
    for d in [
        react(C, &a, "U2", &ts(MIN)),                  // unpermitted resolve
        unreact(C, &a, "H1", &ts(MIN)),                // reopen of an open ticket
        reaction(true, C, &a, "U3", "eyes", &ts(MIN)), // other emoji
        reply(C, &a, &ts(MIN), "H2", "?nonsense"),     // unknown macro
        reply(C, &a, &ts(MIN), "H2", "?tag"),          // empty tag
        as_bot(reply(C, &a, &ts(MIN), "U4", "bot")),   // bot message
        reply(C, &ts(77), &ts(MIN), "U5", "lost"),     // unknown thread
        msg(ELSEWHERE, &ts(MIN), "U6", "elsewhere"),   // not a help channel
    ] {
        assert_eq!(e.apply(&d), Outcome::Ignored, "{d:?}");
    }
    assert_eq!(user_ids(&e), ["U1"]);
    for u in ["H1", "H2", "H9", "UBOT", "U2", "U3", "U4", "U5", "U6"] {
        assert_eq!(e.user(u, 0), None, "{u}");
    }
    // Helpers get ids once they act.
    e.apply(&reply(C, &a, &ts(2 * MIN), "H9", "hello"));
    assert_eq!(user_ids(&e), ["U1", "H9"]);
    assert_eq!(
        e.user("H9", 0),
        Some(UserStats {
            tickets_opened: 0,
            tickets_closed: 0,
            helper: true
        })
    );
}

#[test]
fn r12_user_stats_per_scope() {
    let mut e = engine();
    let a = ts(0);
    let b = ts(1);
    e.apply(&msg(C, &a, "U1", "a"));
    e.apply(&msg(C2, &b, "U1", "b"));
    e.apply(&reply(C2, &b, &ts(MIN), "H1", "?resolve"));
    let c2 = e.scope(Some(C2)).unwrap();
    let c1 = e.scope(Some(C)).unwrap();
    let u = |o, c| UserStats {
        tickets_opened: o,
        tickets_closed: c,
        helper: false,
    };
    assert_eq!(e.user("U1", 0), Some(u(2, 0)));
    assert_eq!(e.user("U1", c1), Some(u(1, 0)));
    assert_eq!(e.user("U1", c2), Some(u(1, 0)));
    let h = |c| UserStats {
        tickets_opened: 0,
        tickets_closed: c,
        helper: true,
    };
    assert_eq!(e.user("H1", 0), Some(h(1)));
    assert_eq!(e.user("H1", c1), Some(h(0)));
    assert_eq!(e.user("H1", c2), Some(h(1)));
}

#[test]
fn r12_events_apply_in_arrival_order_with_their_own_times() {
    let mut e = engine();
    let a = ts(0);
    e.apply(&msg(C, &a, "U1", "a"));
    // A resolve arrives before an earlier-stamped helper reply.
    e.apply(&react(C, &a, "U1", &ts(10 * MIN)));
    e.apply(&reply(C, &a, &ts(5 * MIN), "H1", "answer"));
    let t = tk(&e, 1);
    // Applied in arrival order: the ticket was closed when the reply came.
    assert_eq!(t.status, Status::Closed);
    assert_eq!(t.closed_by, Some(uid(&e, "U1")));
    assert_eq!(t.closed_at, Some(mic(10 * MIN)));
    assert_eq!((t.assigned_to, t.assigned_at), (None, None));
    assert_eq!(
        (t.last_msg_at, t.last_msg_by),
        (mic(5 * MIN), LastBy::Helper)
    );
}

#[test]
fn r11_duplicate_ignored_after_answer_at_a_later_fixed_now() {
    // A replay on a fixed clock: answers are given at a `now` far after the
    // deliveries' own times; a retried delivery must still be a duplicate.
    let mut e = engine();
    let a = ts(0);
    apply_all(
        &mut e,
        &[
            with_id(msg(C, &a, "U1", "a"), "Ev1"),
            with_id(react(C, &a, "H1", &ts(MIN)), "Ev2"),
            with_id(unreact(C, &a, "H1", &ts(2 * MIN)), "Ev3"),
        ],
    );
    e.stats_v2(mic(30 * DAY), 0);
    e.apply(&with_id(reply(C, &a, &ts(3 * MIN), "U2", "+1"), "Ev4"));
    assert_eq!(
        e.apply(&with_id(react(C, &a, "H1", &ts(MIN)), "Ev2")),
        Outcome::Duplicate
    );
    let t = tk(&e, 1);
    assert_eq!(t.status, Status::Open);
    assert_eq!(t.reopened_at, Some(mic(2 * MIN)));
}
