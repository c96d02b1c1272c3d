//! nginx's config syntax as its own parser reads it (ngx_conf_read_token): words, quotes, `#`
//! comments, and directives that end at `;` or `{`, not at line ends.

/// One lexical token of an nginx config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Token {
    /// A word, unquoted (`"a b"` is the one word `a b`).
    Word(String),
    /// `;`: the end of a simple directive.
    End,
    /// `{`: the start of a block.
    Open,
    /// `}`.
    Close,
}

/// The tokens of `text`; comments and whitespace are gone, so two texts nginx reads the same
/// way have equal tokens.
pub fn tokens(text: &str) -> Vec<Token> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    let mut word = String::new();
    let mut in_word = false;
    let flush = |word: &mut String, in_word: &mut bool, out: &mut Vec<Token>| {
        if *in_word {
            out.push(Token::Word(std::mem::take(word)));
            *in_word = false;
        }
    };
    while let Some(c) = chars.next() {
        match c {
            '#' if !in_word => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        break;
                    }
                }
            }
            '"' | '\'' if !in_word => {
                in_word = true;
                while let Some(q) = chars.next() {
                    match q {
                        '\\' => {
                            if let Some(escaped) = chars.next() {
                                word.push(escaped);
                            }
                        }
                        q if q == c => break,
                        q => word.push(q),
                    }
                }
                flush(&mut word, &mut in_word, &mut out);
            }
            ';' | '{' | '}' if !(c == '{' && word.ends_with('$')) => {
                flush(&mut word, &mut in_word, &mut out);
                out.push(match c {
                    ';' => Token::End,
                    '{' => Token::Open,
                    _ => Token::Close,
                });
            }
            '{' => {
                // `${name}` inside a word is a variable, not a block.
                word.push(c);
                for v in chars.by_ref() {
                    word.push(v);
                    if v == '}' {
                        break;
                    }
                }
            }
            c if c.is_whitespace() => flush(&mut word, &mut in_word, &mut out),
            '\\' => {
                in_word = true;
                word.push(c);
                if let Some(next) = chars.next() {
                    word.push(next);
                }
            }
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    flush(&mut word, &mut in_word, &mut out);
    out
}

/// Every simple directive (the words before a `;`), in order, whatever its block.
pub fn simple_directives(text: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut words = Vec::new();
    for token in tokens(text) {
        match token {
            Token::Word(w) => words.push(w),
            Token::End => out.push(std::mem::take(&mut words)),
            Token::Open | Token::Close => words.clear(),
        }
    }
    out
}

/// Whether nginx reads `a` and `b` the same way (they differ at most in comments and spacing).
pub fn same_directives(a: &str, b: &str) -> bool {
    tokens(a) == tokens(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn directives_end_at_semicolons_not_lines() {
        let text = "worker_processes 2; pid /x/nginx.pid; # the pid\nevents {}\nhttp { server_name \"a b\"; set $x ${y}z;\n  add_header X 'q;\\'x'; }\n";
        assert_eq!(
            simple_directives(text),
            [
                words(&["worker_processes", "2"]),
                words(&["pid", "/x/nginx.pid"]),
                words(&["server_name", "a b"]),
                words(&["set", "$x", "${y}z"]),
                words(&["add_header", "X", "q;'x"]),
            ]
        );
    }

    #[test]
    fn comments_and_spacing_do_not_count() {
        assert!(same_directives(
            "# written by deploy.sh\nset $service_url http://127.0.0.1:1;  # blue\n",
            "# Managed by nonstop\nset $service_url\thttp://127.0.0.1:1 ;\n"
        ));
        assert!(same_directives(
            "upstream a {\n    server 127.0.0.1:1 down; # node n1 draining\n}\n",
            "upstream a {\n    server 127.0.0.1:1 down; # node n1 disabled\n}\n"
        ));
        assert!(!same_directives(
            "upstream a { server 127.0.0.1:1 down; }",
            "upstream a { server 127.0.0.1:1; }"
        ));
    }
}
