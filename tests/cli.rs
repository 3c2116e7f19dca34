//! The `seshat` binary as a user runs it: replay of a real fixture stream, and
//! configuration errors with exit code 2.

use seshat::engine::Engine;
use seshat::model::Config;
use seshat::slack::{self, Body};
use seshat::time::Micros;
use std::process::{Command, Output};

const STORY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/replay/story.jsonl");
const NOW: &str = "2026-01-01T12:00:00Z";

fn seshat(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_seshat"))
        .args(args)
        .env_clear()
        .env("RUST_LOG", "warn")
        .envs(env.iter().copied())
        .output()
        .expect("the binary runs")
}

const WORKSPACE: [(&str, &str); 5] = [
    ("SLACK_HELP_CHANNEL", "C0HELP0001,C0HELP0002"),
    ("SLACK_BTS_CHANNEL", "C0TEAM0001"),
    ("HELPERS", "U0HELPER1"),
    ("TRUSTED_BOTS", "U0NEPHTHY"),
    ("SLACK_WORKSPACE", "seshat-support"),
];

#[test]
fn replay_prints_the_stats_of_the_applied_stream() {
    let out = seshat(&["replay", STORY, "--now", NOW], &WORKSPACE);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stdout is JSON");

    // The same lines applied in-process give the same answer.
    let mut engine = Engine::new(Config {
        help_channels: vec!["C0HELP0001".into(), "C0HELP0002".into()],
        team_channel: Some("C0TEAM0001".into()),
        helpers: vec!["U0HELPER1".into()],
        trusted_bots: vec!["U0NEPHTHY".into()],
        workspace: "seshat-support".into(),
        ..Config::default()
    });
    for line in std::fs::read_to_string(STORY).unwrap().lines() {
        if let Ok(Body::Event(d)) = slack::decode(line.as_bytes()) {
            engine.apply(&d);
        }
    }
    let expected =
        serde_json::to_value(engine.stats_v2(Micros::parse_iso(NOW).unwrap(), 0)).unwrap();
    assert_eq!(printed, expected);
    assert_eq!(
        printed["all_time"]["tickets_total"], 1,
        "two of three tickets were withdrawn"
    );

    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("line 9: skipped"), "{stderr}");
    assert!(stderr.contains("line 26: rejected"), "{stderr}");
    assert!(
        stderr.contains("applied,") && stderr.contains("ignored,") && stderr.contains("2 rejected"),
        "{stderr}"
    );
}

/// Arguments, environment, and a phrase the error must contain.
type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);

#[test]
fn bad_configuration_exits_2_with_one_clear_line() {
    let cases: [Case; 4] = [
        (&["serve"], &WORKSPACE, "SLACK_SIGNING_SECRET"),
        (
            &["serve"],
            &[("SLACK_SIGNING_SECRET", "x")],
            "SLACK_HELP_CHANNEL",
        ),
        (
            &["serve"],
            &[
                ("SLACK_SIGNING_SECRET", "x"),
                ("SLACK_HELP_CHANNEL", "general"),
            ],
            "malformed channel id \"general\"",
        ),
        (
            &["replay", STORY, "--now", "yesterday"],
            &WORKSPACE,
            "not an ISO 8601 instant",
        ),
    ];
    for (args, env, needle) in cases {
        let out = seshat(args, env);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
        assert!(out.stdout.is_empty());
    }
}
