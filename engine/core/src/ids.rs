//! Identifiers as newtypes, so a subtask index can never be passed where a key group is meant.
//!
//! All of them are small `Copy` integers, ordered, hashable and serde-serializable.

use serde::{Deserialize, Serialize};
use std::fmt;

macro_rules! id {
    ($(#[$doc:meta])* $name:ident($inner:ty), $prefix:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
        pub struct $name(pub $inner);

        impl $name {
            /// The raw value.
            pub const fn get(self) -> $inner {
                self.0
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($prefix, "{}"), self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($prefix, "{}"), self.0)
            }
        }

        impl From<$inner> for $name {
            fn from(v: $inner) -> Self {
                Self(v)
            }
        }
    };
}

id!(
    /// A logical operator (a vertex of the job graph).
    OperatorId(u32), "op"
);
id!(
    /// The index of one parallel instance of an operator, in `[0, parallelism)`.
    SubtaskIndex(u32), "#"
);
id!(
    /// A key group, in `[0, max_parallelism)`: the unit of keyed state and of rescaling.
    KeyGroup(u32), "kg"
);
id!(
    /// A checkpoint: the global cut. Ids start at 1 and only go up within a job.
    CheckpointId(u64), "cp"
);
id!(
    /// The index of an input channel within one input gate, or an output channel within a writer.
    ChannelIndex(u32), "ch"
);
id!(
    /// A position in a broker partition's log.
    Offset(u64), "@"
);
id!(
    /// One deployment of the job. Bumps on every (re)deploy; messages from an older attempt are stale.
    AttemptId(u64), "attempt"
);
id!(
    /// A partition of a broker topic.
    PartitionId(u32), "p"
);
id!(
    /// A task manager (a worker process offering slots).
    TaskManagerId(u32), "tm"
);

impl CheckpointId {
    /// The first checkpoint id of a job.
    pub const FIRST: CheckpointId = CheckpointId(1);

    /// The id after this one.
    pub const fn next(self) -> CheckpointId {
        CheckpointId(self.0 + 1)
    }
}

impl AttemptId {
    /// The attempt after this one.
    pub const fn next(self) -> AttemptId {
        AttemptId(self.0 + 1)
    }
}

impl Offset {
    /// The offset after this one.
    pub const fn next(self) -> Offset {
        Offset(self.0 + 1)
    }
}

/// A subtask of an operator: the unit that is deployed, snapshotted and restarted.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SubtaskId {
    /// The operator (vertex) this subtask belongs to.
    pub operator: OperatorId,
    /// Which parallel instance.
    pub index: SubtaskIndex,
}

impl SubtaskId {
    /// Builds a subtask id.
    pub const fn new(operator: OperatorId, index: u32) -> Self {
        SubtaskId { operator, index: SubtaskIndex(index) }
    }
}

impl fmt::Debug for SubtaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.operator, self.index)
    }
}

impl fmt::Display for SubtaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_display_with_their_prefix() {
        let cases: &[(String, &str)] = &[
            (OperatorId(3).to_string(), "op3"),
            (CheckpointId(7).to_string(), "cp7"),
            (KeyGroup(35).to_string(), "kg35"),
            (SubtaskId::new(OperatorId(2), 1).to_string(), "op2#1"),
            (Offset(10).to_string(), "@10"),
        ];
        for (got, want) in cases {
            assert_eq!(got, want);
        }
    }

    #[test]
    fn successors_go_up_by_one() {
        assert_eq!(CheckpointId::FIRST.next(), CheckpointId(2));
        assert_eq!(AttemptId(4).next(), AttemptId(5));
        assert_eq!(Offset(0).next(), Offset(1));
    }
}
