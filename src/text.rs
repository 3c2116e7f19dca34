//! Pure text helpers: ticket titles from Slack message text (lifecycle.md,
//! "Title") and macro words in thread replies (lifecycle.md, R2/R3).
//!
//! Choices made where the spec is silent:
//!
//! - **Line selection**: each `\n`-separated line is made readable (markup,
//!   then entities, then whitespace) and the first line that is non-empty
//!   *after* that processing is the title. So a line whose markup renders to
//!   nothing (e.g. `<https://x| >`) is skipped like a blank line.
//! - **Markup** is a `<…>` span containing no `<` and at least one character;
//!   anything else (`a < b`, `<>`, an unclosed `<`) is kept literally. The
//!   target and the label are split at the first `|`; an empty label counts as
//!   no label.
//! - `<@U1|name>` → `@name`, `<#C1|name>` → `#name`: the sigil is added only
//!   when the label does not already start with it (`<@U1|@name>` → `@name`).
//! - `<!here>`, `<!channel>`, `<!everyone>` → `@here`, …; with a label
//!   (`<!here|here>` or `<!here|@here>`) the label, with `@` prefixed when it
//!   lacks one.
//! - `<!subteam^S1|@team>` → the label as is (`@team`); without a label,
//!   `<!subteam^S1>` → `@S1` (and a bare `<!subteam>` → `@subteam`).
//! - Any other `<!cmd^…|fallback>` (e.g. `<!date^…|Jan 1>`) → the label as is;
//!   without one, `@cmd` (like the legacy `<!group>` broadcast).
//! - Anything else is a link: `<url|label>` → `label`, `<url>` → `url`
//!   (`mailto:`, `tel:`, … included).
//! - Truncation keeps exactly the first 80 characters of the processed line
//!   and appends `…`, even if the 80th character is a space.

/// Title used when the text has no line with visible content.
pub const NO_TEXT_TITLE: &str = "(no text)";

/// Maximum number of characters (Unicode scalar values) kept in a title.
pub const TITLE_MAX_CHARS: usize = 80;

/// Derives a ticket title from a message's raw Slack text (lifecycle.md "Title").
#[must_use]
pub fn derive_title(text: &str) -> String {
    for line in text.split('\n') {
        let readable = collapse_whitespace(&decode_entities(&readable_markup(line)));
        if !readable.is_empty() {
            return truncate_title(readable);
        }
    }
    NO_TEXT_TITLE.to_owned()
}

/// Parses a leading `?word` macro: its lowercased name without leading `?`s, and the untrimmed rest of the text.
#[must_use]
pub fn macro_word(text: &str) -> Option<(String, &str)> {
    let start = text.find(|c: char| !c.is_whitespace())?;
    let from_word = &text[start..];
    if !from_word.starts_with('?') {
        return None;
    }
    let end = from_word
        .find(char::is_whitespace)
        .unwrap_or(from_word.len());
    let (word, rest) = from_word.split_at(end);
    Some((word.trim_start_matches('?').to_lowercase(), rest))
}

/// Replaces every Slack markup span `<…>` in `line` by its readable form.
fn readable_markup(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut rest = line;
    while let Some(open) = rest.find('<') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        match after.find(['<', '>']) {
            Some(close) if close > 0 && after.as_bytes()[close] == b'>' => {
                push_readable(&after[..close], &mut out);
                rest = &after[close + 1..];
            }
            _ => {
                out.push('<');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// Appends the readable form of one markup span's inner text (without `<>`).
fn push_readable(inner: &str, out: &mut String) {
    let (target, label) = match inner.split_once('|') {
        Some((target, label)) if !label.is_empty() => (target, Some(label)),
        Some((target, _)) => (target, None),
        None => (inner, None),
    };
    if let Some(user) = target.strip_prefix('@') {
        push_with_sigil('@', label.unwrap_or(user), out);
    } else if let Some(channel) = target.strip_prefix('#') {
        push_with_sigil('#', label.unwrap_or(channel), out);
    } else if let Some(special) = target.strip_prefix('!') {
        let (command, argument) = match special.split_once('^') {
            Some((command, argument)) => (command, Some(argument)),
            None => (special, None),
        };
        match (command, label) {
            ("here" | "channel" | "everyone", Some(label)) => push_with_sigil('@', label, out),
            (_, Some(label)) => out.push_str(label),
            ("subteam", None) => {
                let id = argument
                    .map(|a| a.split('^').next().unwrap_or(a))
                    .filter(|id| !id.is_empty())
                    .unwrap_or(command);
                push_with_sigil('@', id, out);
            }
            (_, None) => push_with_sigil('@', command, out),
        }
    } else {
        out.push_str(label.unwrap_or(target));
    }
}

/// Appends `text`, prefixed with `sigil` unless it already starts with it.
fn push_with_sigil(sigil: char, text: &str, out: &mut String) {
    if !text.starts_with(sigil) {
        out.push(sigil);
    }
    out.push_str(text);
}

/// Decodes `&amp;`, `&lt;` and `&gt;` in a single left-to-right pass.
fn decode_entities(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        let at = &rest[amp..];
        let (decoded, consumed) = if at.starts_with("&amp;") {
            ('&', "&amp;".len())
        } else if at.starts_with("&lt;") {
            ('<', "&lt;".len())
        } else if at.starts_with("&gt;") {
            ('>', "&gt;".len())
        } else {
            ('&', 1)
        };
        out.push(decoded);
        rest = &at[consumed..];
    }
    out.push_str(rest);
    out
}

/// Collapses runs of Unicode whitespace to one ASCII space and trims both ends.
fn collapse_whitespace(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Keeps the first [`TITLE_MAX_CHARS`] characters and appends `…` if longer.
fn truncate_title(mut s: String) -> String {
    if let Some((cut, _)) = s.char_indices().nth(TITLE_MAX_CHARS) {
        s.truncate(cut);
        s.push('…');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    // ---- derive_title: markup ----

    #[test]
    fn user_mentions() {
        assert_eq!(derive_title("hi <@U123>"), "hi @U123");
        assert_eq!(derive_title("hi <@U123|name>"), "hi @name");
        assert_eq!(derive_title("hi <@U123|@name>"), "hi @name");
        assert_eq!(derive_title("hi <@U123|>"), "hi @U123");
    }

    #[test]
    fn channel_mentions() {
        assert_eq!(derive_title("see <#C123|general>"), "see #general");
        assert_eq!(derive_title("see <#C123>"), "see #C123");
        assert_eq!(derive_title("see <#C123|#general>"), "see #general");
    }

    #[test]
    fn broadcasts() {
        assert_eq!(derive_title("<!here> help"), "@here help");
        assert_eq!(derive_title("<!channel> help"), "@channel help");
        assert_eq!(derive_title("<!everyone> help"), "@everyone help");
        assert_eq!(derive_title("<!here|here> help"), "@here help");
        assert_eq!(derive_title("<!channel|@channel> help"), "@channel help");
        assert_eq!(derive_title("<!group> help"), "@group help");
    }

    #[test]
    fn subteams() {
        assert_eq!(derive_title("ping <!subteam^S1|@team>"), "ping @team");
        assert_eq!(derive_title("ping <!subteam^S1|team>"), "ping team");
        assert_eq!(derive_title("ping <!subteam^S1>"), "ping @S1");
        assert_eq!(derive_title("ping <!subteam>"), "ping @subteam");
    }

    #[test]
    fn other_specials_use_fallback() {
        assert_eq!(
            derive_title("due <!date^1767225600^{date_short}|Jan 1, 2026>"),
            "due Jan 1, 2026"
        );
    }

    #[test]
    fn links() {
        assert_eq!(
            derive_title("read <https://x.io/a?b=1|the docs>"),
            "read the docs"
        );
        assert_eq!(derive_title("read <https://x.io/a>"), "read https://x.io/a");
        assert_eq!(derive_title("mail <mailto:a@b.io|a@b.io>"), "mail a@b.io");
        assert_eq!(derive_title("mail <mailto:a@b.io>"), "mail mailto:a@b.io");
        assert_eq!(derive_title("read <https://x.io|>"), "read https://x.io");
        assert_eq!(derive_title("a <https://x|l|r> b"), "a l|r b");
    }

    #[test]
    fn non_markup_angle_brackets_kept() {
        assert_eq!(derive_title("a < b"), "a < b");
        assert_eq!(derive_title("a <> b"), "a <> b");
        assert_eq!(derive_title("unclosed <@U1"), "unclosed <@U1");
        assert_eq!(derive_title("x <<@U1> y"), "x <@U1 y");
        assert_eq!(derive_title("a > b"), "a > b");
    }

    #[test]
    fn several_markup_spans() {
        assert_eq!(
            derive_title("<@U1> and <@U2|bob> in <#C9|help>: <https://x|link>"),
            "@U1 and @bob in #help: link"
        );
    }

    // ---- derive_title: entities ----

    #[test]
    fn entities_decoded() {
        assert_eq!(derive_title("a &amp; b &lt;c&gt;"), "a & b <c>");
    }

    #[test]
    fn entities_decoded_in_one_pass() {
        assert_eq!(derive_title("&amp;lt;"), "&lt;");
        assert_eq!(derive_title("&amp;amp;"), "&amp;");
        assert_eq!(derive_title("&amp;gt;x"), "&gt;x");
    }

    #[test]
    fn other_entities_untouched() {
        assert_eq!(
            derive_title("&quot; &#39; &nbsp; & &am"),
            "&quot; &#39; &nbsp; & &am"
        );
    }

    #[test]
    fn entities_decoded_after_markup() {
        // A decoded `&lt;` never forms markup.
        assert_eq!(derive_title("&lt;@U1&gt;"), "<@U1>");
        // Labels are decoded too.
        assert_eq!(derive_title("<https://x|a &amp; b>"), "a & b");
    }

    // ---- derive_title: whitespace and lines ----

    #[test]
    fn whitespace_collapsed_and_trimmed() {
        assert_eq!(derive_title("  a \t\t b  \r"), "a b");
        assert_eq!(derive_title("a\u{00A0}\u{00A0}b"), "a b");
        assert_eq!(derive_title("\u{3000}a\u{3000}b\u{3000}"), "a b");
        assert_eq!(derive_title("a\u{2003}\u{2009} b\u{2028}c"), "a b c");
    }

    #[test]
    fn first_non_blank_line() {
        assert_eq!(derive_title("\n  \n\tHello\nsecond"), "Hello");
        assert_eq!(derive_title("first\r\nsecond"), "first");
        assert_eq!(derive_title("\u{00A0}\n\u{3000}\nthird"), "third");
    }

    #[test]
    fn line_blank_after_markup_is_skipped() {
        assert_eq!(derive_title("<https://x| >\nreal"), "real");
    }

    #[test]
    fn empty_and_blank_text() {
        assert_eq!(derive_title(""), "(no text)");
        assert_eq!(derive_title("\n\n"), "(no text)");
        assert_eq!(derive_title(" \n\t\n\u{00A0}\u{3000}\n"), "(no text)");
    }

    // ---- derive_title: truncation ----

    #[test]
    fn exactly_80_chars_not_truncated() {
        let s = "a".repeat(80);
        assert_eq!(derive_title(&s), s);
    }

    #[test]
    fn long_title_truncated() {
        let s = "a".repeat(81);
        assert_eq!(derive_title(&s), format!("{}…", "a".repeat(80)));
    }

    #[test]
    fn truncation_counts_chars_not_bytes() {
        let s = "é".repeat(79) + "日本語";
        let t = derive_title(&s);
        assert_eq!(t, format!("{}日…", "é".repeat(79)));
        assert_eq!(t.chars().count(), 81);
        let emoji = "🦀".repeat(100);
        assert_eq!(derive_title(&emoji), format!("{}…", "🦀".repeat(80)));
    }

    #[test]
    fn truncation_after_processing() {
        // 100 chars of raw markup but a short readable form.
        let s = format!("<https://x.io/{}|short>", "p".repeat(100));
        assert_eq!(derive_title(&s), "short");
        // Collapsing happens before counting.
        let s = format!("{}     {}", "a".repeat(40), "b".repeat(39));
        assert_eq!(
            derive_title(&s),
            format!("{} {}", "a".repeat(40), "b".repeat(39))
        );
    }

    #[test]
    fn truncation_keeps_trailing_space_at_cut() {
        let s = format!("{} tail", "a".repeat(79));
        assert_eq!(derive_title(&s), format!("{} …", "a".repeat(79)));
    }

    // ---- macro_word ----

    #[test]
    fn macro_resolve() {
        assert_eq!(macro_word("?resolve"), Some(("resolve".to_owned(), "")));
        assert_eq!(macro_word("??resolve"), Some(("resolve".to_owned(), "")));
        assert_eq!(
            macro_word("?ReSoLvE thanks"),
            Some(("resolve".to_owned(), " thanks"))
        );
    }

    #[test]
    fn macro_tag_rest_untrimmed() {
        assert_eq!(
            macro_word("?Tag  my tag "),
            Some(("tag".to_owned(), "  my tag "))
        );
        assert_eq!(
            macro_word("?tag billing issue"),
            Some(("tag".to_owned(), " billing issue"))
        );
        assert_eq!(
            macro_word("?tag\u{00A0}x"),
            Some(("tag".to_owned(), "\u{00A0}x"))
        );
    }

    #[test]
    fn macro_leading_whitespace_skipped() {
        assert_eq!(macro_word("\n?reopen"), Some(("reopen".to_owned(), "")));
        assert_eq!(
            macro_word("  \t\u{3000}?close now"),
            Some(("close".to_owned(), " now"))
        );
    }

    #[test]
    fn macro_only_question_marks() {
        assert_eq!(macro_word("?"), Some((String::new(), "")));
        assert_eq!(macro_word("??? what"), Some((String::new(), " what")));
    }

    #[test]
    fn macro_unicode_lowercase() {
        assert_eq!(
            macro_word("?ÉTIQUETTE x"),
            Some(("étiquette".to_owned(), " x"))
        );
    }

    #[test]
    fn macro_inner_question_marks_kept() {
        assert_eq!(macro_word("?re?solve"), Some(("re?solve".to_owned(), "")));
    }

    #[test]
    fn not_a_macro() {
        assert_eq!(macro_word("resolve"), None);
        assert_eq!(macro_word("thanks ?resolve"), None);
        assert_eq!(macro_word("why?"), None);
        assert_eq!(macro_word(""), None);
        assert_eq!(macro_word("   \n "), None);
        assert_eq!(macro_word("¿resolve"), None);
    }
}
