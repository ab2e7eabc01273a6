//! A detection's `condition`: `or` < `and` < `not` < atoms (parentheses, `N of` patterns, a
//! search name), parsed to a tree evaluated against the searches' results.


use anyhow::{ensure, Context, Result};


#[derive(Debug)]
pub(super) enum Condition {
    Search(String),
    Not(Box<Condition>),
    And(Vec<Condition>),
    Or(Vec<Condition>),
    /// At least `n` (all when `None`) of the searches whose names match the pattern.
    Of(Option<usize>, Vec<String>),
}

/// Parses a condition: `or` < `and` < `not` < atoms (`( ... )`, `N of X`, `all of X`, a name).
pub(super) fn parse_condition(text: &str) -> Result<Condition> {
    ensure!(!text.contains('|'), "aggregations (`| count()`, `| near`) are not supported (write a correlation rule)");
    let tokens: Vec<String> = text.replace('(', " ( ").replace(')', " ) ").split_whitespace().map(str::to_string).collect();
    let mut parser = ConditionParser { tokens, at: 0 };
    let condition = parser.or()?;
    ensure!(parser.at == parser.tokens.len(), "unexpected `{}`", parser.tokens[parser.at]);
    Ok(condition)
}

pub(super) struct ConditionParser {
    tokens: Vec<String>,
    at: usize,
}

impl ConditionParser {
    pub(super) fn peek(&self) -> Option<&str> {
        self.tokens.get(self.at).map(String::as_str)
    }

    pub(super) fn next(&mut self) -> Result<String> {
        let token = self.tokens.get(self.at).cloned().context("the condition ends too early")?;
        self.at += 1;
        Ok(token)
    }

    pub(super) fn or(&mut self) -> Result<Condition> {
        let mut items = vec![self.and()?];
        while self.peek().is_some_and(|t| t.eq_ignore_ascii_case("or")) {
            self.at += 1;
            items.push(self.and()?);
        }
        Ok(if items.len() == 1 { items.remove(0) } else { Condition::Or(items) })
    }

    pub(super) fn and(&mut self) -> Result<Condition> {
        let mut items = vec![self.not()?];
        while self.peek().is_some_and(|t| t.eq_ignore_ascii_case("and")) {
            self.at += 1;
            items.push(self.not()?);
        }
        Ok(if items.len() == 1 { items.remove(0) } else { Condition::And(items) })
    }

    pub(super) fn not(&mut self) -> Result<Condition> {
        if self.peek().is_some_and(|t| t.eq_ignore_ascii_case("not")) {
            self.at += 1;
            return Ok(Condition::Not(Box::new(self.not()?)));
        }
        self.atom()
    }

    pub(super) fn atom(&mut self) -> Result<Condition> {
        let token = self.next()?;
        if token == "(" {
            let inner = self.or()?;
            ensure!(self.next()? == ")", "missing `)`");
            return Ok(inner);
        }
        if self.peek().is_some_and(|t| t.eq_ignore_ascii_case("of")) {
            self.at += 1;
            let count = if token.eq_ignore_ascii_case("all") {
                None
            } else {
                Some(token.parse::<usize>().with_context(|| format!("`{token} of`: expected a number or `all`"))?)
            };
            let target = self.next()?;
            // `selection_*` as its literal parts and wildcards.
            let mut pattern = Vec::new();
            for (i, part) in target.split('*').enumerate() {
                if i > 0 {
                    pattern.push("*".to_string());
                }
                if !part.is_empty() {
                    pattern.push(part.to_string());
                }
            }
            return Ok(Condition::Of(count, pattern));
        }
        ensure!(!["and", "or", ")"].iter().any(|k| token.eq_ignore_ascii_case(k)), "unexpected `{token}`");
        Ok(Condition::Search(token))
    }
}
