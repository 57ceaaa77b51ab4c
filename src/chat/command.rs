//! Turning an input line into what the user asked for.

/// One parsed input line. Arguments borrow from the line.
#[derive(Debug, PartialEq, Eq)]
pub enum Command<'a> {
    /// Plain text for the room (with a leading `//` already turned into `/`).
    Say(&'a str),
    Help,
    Nick(&'a str),
    Join(&'a str),
    Rooms,
    Who,
    Msg {
        to: &'a str,
        text: &'a str,
    },
    Me(&'a str),
    Receipts(bool),
    Quit(Option<&'a str>),
    /// A known command with missing or malformed arguments; holds the usage
    /// text.
    Usage(&'static str),
    /// The command word as typed, with its `/`.
    Unknown(&'a str),
}

/// Parses a cleaned, trimmed, non-empty line.
pub fn parse(line: &str) -> Command<'_> {
    let Some(body) = line.strip_prefix('/') else {
        return Command::Say(line);
    };
    if body.starts_with('/') {
        return Command::Say(body);
    }
    let (word, rest) = match body.find(char::is_whitespace) {
        Some(at) => (&body[..at], body[at..].trim()),
        None => (body, ""),
    };
    let typed = &line[..word.len() + 1];
    match word.to_ascii_lowercase().as_str() {
        "help" => Command::Help,
        "nick" if rest.is_empty() => Command::Usage("/nick NAME"),
        "nick" => Command::Nick(rest),
        "join" if rest.is_empty() => Command::Usage("/join #ROOM"),
        "join" => Command::Join(rest),
        "rooms" => Command::Rooms,
        "who" => Command::Who,
        "msg" => match rest.split_once(char::is_whitespace) {
            Some((to, text)) if !text.trim().is_empty() => Command::Msg {
                to,
                text: text.trim(),
            },
            _ => Command::Usage("/msg NICK TEXT"),
        },
        "me" if rest.is_empty() => Command::Usage("/me TEXT"),
        "me" => Command::Me(rest),
        "receipts" => match rest.to_ascii_lowercase().as_str() {
            "on" => Command::Receipts(true),
            "off" => Command::Receipts(false),
            _ => Command::Usage("/receipts on|off"),
        },
        "quit" => Command::Quit((!rest.is_empty()).then_some(rest)),
        _ => Command::Unknown(typed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_and_the_double_slash_escape_are_speech() {
        assert_eq!(parse("hello"), Command::Say("hello"));
        assert_eq!(
            parse("//join is a command"),
            Command::Say("/join is a command")
        );
        assert_eq!(parse("a /nick b"), Command::Say("a /nick b"));
    }

    #[test]
    fn commands_take_their_arguments() {
        assert_eq!(parse("/nick bob"), Command::Nick("bob"));
        assert_eq!(parse("/NICK bob"), Command::Nick("bob"));
        assert_eq!(parse("/nick two words"), Command::Nick("two words"));
        assert_eq!(parse("/join #rust"), Command::Join("#rust"));
        assert_eq!(
            parse("/msg bob  hi  there"),
            Command::Msg {
                to: "bob",
                text: "hi  there"
            }
        );
        assert_eq!(parse("/me waves"), Command::Me("waves"));
        assert_eq!(parse("/receipts ON"), Command::Receipts(true));
        assert_eq!(parse("/receipts off"), Command::Receipts(false));
        assert_eq!(parse("/quit"), Command::Quit(None));
        assert_eq!(
            parse("/quit gone fishing"),
            Command::Quit(Some("gone fishing"))
        );
        assert_eq!(parse("/who"), Command::Who);
        assert_eq!(parse("/rooms"), Command::Rooms);
        assert_eq!(parse("/help"), Command::Help);
    }

    #[test]
    fn missing_arguments_give_usage() {
        assert_eq!(parse("/nick"), Command::Usage("/nick NAME"));
        assert_eq!(parse("/join"), Command::Usage("/join #ROOM"));
        assert_eq!(parse("/msg bob"), Command::Usage("/msg NICK TEXT"));
        assert_eq!(parse("/msg"), Command::Usage("/msg NICK TEXT"));
        assert_eq!(parse("/me"), Command::Usage("/me TEXT"));
        assert_eq!(parse("/receipts maybe"), Command::Usage("/receipts on|off"));
    }

    #[test]
    fn unknown_commands_keep_the_word_as_typed() {
        assert_eq!(parse("/Dance now"), Command::Unknown("/Dance"));
        assert_eq!(parse("/"), Command::Unknown("/"));
    }
}
