//! Typed identifiers. Nodes are numbered (their Raft ids); services, units and shards are named
//! by the operator, and their names are their identities (unique within the cluster).

use std::fmt;

/// A node's Raft id. Ids are assigned from the config: the n-th `[[nodes]]` entry is id n (1-based).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId(pub u64);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
        pub struct $name(pub String);

        impl $name {
            /// Wraps a name.
            pub fn new(name: impl Into<String>) -> Self {
                Self(name.into())
            }

            /// The name as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl From<&str> for $name {
            fn from(name: &str) -> Self {
                Self(name.to_owned())
            }
        }

        impl From<String> for $name {
            fn from(name: String) -> Self {
                Self(name)
            }
        }
    };
}

name_type!(
    /// A service's name (a redundancy domain: its units, its shards and a redundancy model).
    ServiceName
);
name_type!(
    /// A unit's name (one process of a service, placed on one node).
    UnitName
);
name_type!(
    /// A shard's name (a piece of work assigned to units with a role).
    ShardName
);

/// True for a name tandem accepts for a node, service, unit or shard: 1 to 64 characters from
/// `[A-Za-z0-9_.-]`. Names appear in paths, environment variables and command lines, so
/// nothing else is allowed.
pub fn is_valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(is_valid_name("counter-a"));
        assert!(is_valid_name("n1.rack_2"));
        assert!(!is_valid_name(""));
        assert!(!is_valid_name("a b"));
        assert!(!is_valid_name("a/b"));
        assert!(!is_valid_name(&"x".repeat(65)));
        assert_eq!(UnitName::from("u").to_string(), "u");
    }
}
