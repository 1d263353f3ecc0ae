//! What is wrong with a configuration: each problem with its key path and line.

use std::fmt;

/// One thing wrong with a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Key path such as `routes[0].stream.interval`; empty for the whole document.
    pub path: String,
    /// Line in the file, where the parser gives one.
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = if self.path.is_empty() { "(document)" } else { &self.path };
        match self.line {
            Some(line) => write!(f, "{path}: {} (line {line})", self.message),
            None => write!(f, "{path}: {}", self.message),
        }
    }
}

/// Every problem found in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<Problem>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{} in the configuration:", counted(self.0.len(), "problem"))?;
        for p in &self.0 {
            writeln!(f, "  - {p}")?;
        }
        Ok(())
    }
}

/// `1 problem`, `2 problems`: a count in words.
pub fn counted(n: usize, thing: &str) -> String {
    if n == 1 {
        format!("1 {thing}")
    } else {
        format!("{n} {thing}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_said_in_words() {
        assert_eq!(counted(1, "problem"), "1 problem");
        assert_eq!(counted(3, "problem"), "3 problems");
        assert_eq!(counted(0, "route"), "0 routes");
    }
}
