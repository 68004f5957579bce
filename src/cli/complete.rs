//! Tab completion and hints: commands after `/`, members after `@` (and after `/msg`, `/whois`),
//! sessions after `/join` and `/close`.
//!
//! Written as rustyline's [`Completer`] and [`Hinter`], the interfaces made for this, so the
//! rules stay apart from the screen that asks them. The names come from what the program last
//! saw (the roster, the last `/sessions`), kept in [`Names`].

use std::sync::Arc;

use parking_lot::{Mutex, MutexGuard};

use rustyline::Context;
use rustyline::completion::Completer;
use rustyline::hint::Hinter;

use confab::client::Client;
use confab::protocol::DirectoryEntry;

/// Every command, for completion and `/help`.
pub const COMMANDS: [&str; 16] = [
    "/start",
    "/join",
    "/leave",
    "/sessions",
    "/who",
    "/whois",
    "/online",
    "/trust",
    "/msg",
    "/me",
    "/history",
    "/close",
    "/clear",
    "/help",
    "/quit",
    "/exit",
];

#[derive(Default)]
struct Lists {
    members: Vec<String>,
    /// Session names and id prefixes.
    sessions: Vec<String>,
}

/// The names completion offers, updated as the program learns them.
#[derive(Clone, Default)]
pub struct Names {
    lists: Arc<Mutex<Lists>>,
}

impl Names {
    fn lock(&self) -> MutexGuard<'_, Lists> {
        self.lists.lock()
    }

    /// Takes the members from the client's roster (only those known, in a large session).
    pub fn members(&self, client: &Client) {
        let members = client.members().into_iter().map(|m| m.user).collect();
        self.lock().members = members;
    }

    /// Takes the sessions from a directory listing: names, and ids cut to 8 characters.
    pub fn sessions(&self, list: &[DirectoryEntry]) {
        let mut sessions: Vec<String> = list
            .iter()
            .flat_map(|s| {
                let id = s.id.to_string()[..8].to_string();
                s.name.clone().into_iter().chain([id])
            })
            .filter(|n| !n.chars().any(char::is_control))
            .collect();
        sessions.sort();
        sessions.dedup();
        self.lock().sessions = sessions;
    }
}

/// Completes and hints from [`Names`].
pub struct Completion {
    /// Where the names come from.
    pub names: Names,
}

fn starts_with_ignore_case(candidate: &str, word: &str) -> bool {
    candidate.to_lowercase().starts_with(&word.to_lowercase())
}

impl Completion {
    fn candidates(&self, line: &str, pos: usize) -> (usize, Vec<String>) {
        let before = &line[..pos];
        // After the last white space, whatever its width: an ideographic space (U+3000) is
        // three bytes, and `i + 1` would cut it.
        let start = before
            .char_indices()
            .rev()
            .find(|(_, c)| c.is_whitespace())
            .map_or(0, |(i, c)| i + c.len_utf8());
        let word = &before[start..];
        let lists = self.names.lock();
        let pick = |names: &[String], prefix: &str, typed: &str| -> Vec<String> {
            names
                .iter()
                .filter(|n| starts_with_ignore_case(n, typed))
                .map(|n| format!("{prefix}{n} "))
                .collect()
        };
        let first = line.split_whitespace().next().unwrap_or("");
        let second_word = start > 0 && before[..start].split_whitespace().count() == 1;
        let found = if start == 0 && word.starts_with('/') {
            COMMANDS
                .iter()
                .filter(|c| c.starts_with(word))
                .map(|c| format!("{c} "))
                .collect()
        } else if let Some(name) = word.strip_prefix('@') {
            pick(&lists.members, "@", name)
        } else if second_word && matches!(first, "/join" | "/close") {
            pick(&lists.sessions, "", word)
        } else if second_word && first == "/help" {
            COMMANDS
                .iter()
                .map(|c| c.trim_start_matches('/').to_string())
                .filter(|c| c.starts_with(word))
                .map(|c| format!("{c} "))
                .collect()
        } else if (second_word && matches!(first, "/msg" | "/whois" | "/trust"))
            || (!first.starts_with('/') && !word.is_empty())
        {
            pick(&lists.members, "", word)
        } else {
            Vec::new()
        };
        (start, found)
    }
}

impl Completer for Completion {
    type Candidate = String;

    fn complete(
        &self,
        line: &str,
        pos: usize,
        _ctx: &Context<'_>,
    ) -> rustyline::Result<(usize, Vec<String>)> {
        Ok(self.candidates(line, pos))
    }
}

impl Hinter for Completion {
    type Hint = String;

    /// The rest of the only candidate, when the cursor is at the end of a command or an
    /// `@name`; plain chat words get no hint (a name hinted after every `a` would be noise),
    /// though Tab still completes them.
    fn hint(&self, line: &str, pos: usize, _ctx: &Context<'_>) -> Option<String> {
        if pos < line.len() || line.is_empty() {
            return None;
        }
        let (start, found) = self.candidates(line, pos);
        if !line.starts_with('/') && !line[start..].starts_with('@') {
            return None;
        }
        let [only] = found.as_slice() else {
            return None;
        };
        let typed = line[start..pos].chars().count();
        let rest: String = only.trim_end().chars().skip(typed).collect();
        (!rest.is_empty()).then_some(rest)
    }
}

/// The longest start all `candidates` share.
pub fn common_prefix(candidates: &[String]) -> String {
    let Some(first) = candidates.first() else {
        return String::new();
    };
    let mut len = first.len();
    for c in &candidates[1..] {
        len = first
            .char_indices()
            .zip(c.chars())
            .take_while(|((_, a), b)| a == b)
            .last()
            .map_or(0, |((i, a), _)| i + a.len_utf8())
            .min(len);
    }
    first[..len].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn completion() -> Completion {
        let names = Names::default();
        {
            let mut l = names.lock();
            l.members = vec!["alice".into(), "bob".into(), "bobby".into()];
            l.sessions = vec!["1c07ffab".into(), "lobby".into()];
        }
        Completion { names }
    }

    fn complete(line: &str) -> Vec<String> {
        completion().candidates(line, line.len()).1
    }

    #[test]
    fn commands_after_a_slash_members_after_an_at_sessions_after_join() {
        assert_eq!(complete("/wh"), ["/who ", "/whois "]);
        assert_eq!(complete("@al"), ["@alice "]);
        assert_eq!(complete("hi @Bo"), ["@bob ", "@bobby "]);
        assert_eq!(complete("/join lo"), ["lobby "]);
        assert_eq!(complete("/close 1c"), ["1c07ffab "]);
        assert_eq!(complete("/msg al"), ["alice "]);
        assert_eq!(complete("/help wh"), ["who ", "whois "]);
        assert!(complete("/join lobby x").is_empty());
    }

    #[test]
    fn a_hint_is_the_rest_of_the_only_candidate() {
        let c = completion();
        let history = rustyline::history::MemHistory::new();
        let ctx = Context::new(&history);
        assert_eq!(c.hint("/sess", 5, &ctx).as_deref(), Some("ions"));
        assert_eq!(c.hint("@bo", 3, &ctx), None);
        assert_eq!(c.hint("/sessions", 9, &ctx), None);
        assert_eq!(c.hint("@al", 3, &ctx).as_deref(), Some("ice"));
        assert_eq!(c.hint("hi al", 5, &ctx), None);
    }

    #[test]
    fn wide_white_space_and_wide_names_complete_without_panicking() {
        let c = completion();
        let history = rustyline::history::MemHistory::new();
        let ctx = Context::new(&history);
        for line in [
            "hi\u{3000}@al",
            "\u{3000}",
            "/msg\u{3000}al",
            "日本語\u{3000}@bo",
            "é @",
            "@",
        ] {
            let _ = c.candidates(line, line.len());
            let _ = c.hint(line, line.len(), &ctx);
        }
        assert_eq!(complete("hi\u{3000}@al"), ["@alice "]);
        assert_eq!(
            c.hint("日本\u{3000}@al", "日本\u{3000}@al".len(), &ctx)
                .as_deref(),
            Some("ice")
        );
    }

    #[test]
    fn common_prefix_of_candidates() {
        assert_eq!(common_prefix(&["@bob ".into(), "@bobby ".into()]), "@bob");
        assert_eq!(common_prefix(&["é1".into(), "é2".into()]), "é");
    }
}
