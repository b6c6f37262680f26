//! Slot sharing and deployment contents: pure functions, no I/O (Flink's `SlotSharingGroup` +
//! `DefaultScheduler` placement, and `StateAssignmentOperation` through
//! [`CheckpointMetadata::restore_assignment`]).
//!
//! * **Slot sharing**: a job needs as many slots as its largest vertex parallelism. Slot `i` runs
//!   subtask `i` of every vertex that has one, so a pipeline's subtasks share a slot as in Flink's
//!   default slot-sharing group.
//! * **Placement**: the slots of the live task managers are taken in (task-manager id, slot
//!   number) order; too few slots and nothing is placed (the job waits).
//! * **Restore**: every subtask gets the part of the latest completed checkpoint that its
//!   vertex's restore assignment gives its index (at the deployed parallelism, so a rescale
//!   restores too).

use crate::cluster::protocol::SubtaskDeployment;
use crate::cluster::TM_DATA_PORT;
use floe_core::coordinator::{CheckpointMetadata, CheckpointPlan, OperatorParallelism, RestoreError};
use floe_core::graph::ExecutionGraph;
use floe_core::ids::{OperatorId, SubtaskId, TaskManagerId};
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

/// One vertex (operator chain) as the scheduler sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VertexInfo {
    /// The vertex id (its head operator's id).
    pub id: OperatorId,
    /// Its subtasks.
    pub parallelism: u32,
    /// Its key groups.
    pub max_parallelism: u32,
    /// The head is a source (receives triggers, reports end of input).
    pub is_source: bool,
}

/// The shape of a job: its vertices in topological order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Topology {
    /// The vertices.
    pub vertices: Vec<VertexInfo>,
}

impl Topology {
    /// The topology of an expanded job.
    pub fn from_graph(graph: &ExecutionGraph) -> Self {
        let vertices = graph
            .vertices
            .iter()
            .map(|v| VertexInfo { id: v.id, parallelism: v.parallelism, max_parallelism: v.max_parallelism, is_source: v.is_source })
            .collect();
        Topology { vertices }
    }

    /// Slots the job needs: its largest vertex parallelism.
    pub fn slots_needed(&self) -> u32 {
        self.vertices.iter().map(|v| v.parallelism).max().unwrap_or(0)
    }

    /// Who takes part in every checkpoint: every subtask of every vertex; the source vertices'
    /// subtasks are the sources.
    pub fn checkpoint_plan(&self) -> CheckpointPlan {
        let operators = self
            .vertices
            .iter()
            .map(|v| (v.id, OperatorParallelism { parallelism: v.parallelism, max_parallelism: v.max_parallelism }))
            .collect();
        let sources: Vec<OperatorId> = self.vertices.iter().filter(|v| v.is_source).map(|v| v.id).collect();
        CheckpointPlan::from_operators(operators, &sources)
    }

    /// The subtasks slot `slot` runs: subtask `slot` of every vertex that has one.
    pub fn subtasks_of_slot(&self, slot: u32) -> impl Iterator<Item = (VertexInfo, SubtaskId)> + '_ {
        self.vertices.iter().filter(move |v| slot < v.parallelism).map(move |v| (*v, SubtaskId::new(v.id, slot)))
    }
}

/// Picks `needed` slots from `offers` (`(task manager, slots offered)`, any order): the slots in
/// (task-manager id, slot number) order. Returns the task manager of each slot, or `None` when
/// the offers hold fewer than `needed` slots.
pub fn assign_slots(offers: &[(TaskManagerId, u32)], needed: u32) -> Option<Vec<TaskManagerId>> {
    let mut sorted: Vec<(TaskManagerId, u32)> = offers.to_vec();
    sorted.sort();
    let assigned: Vec<TaskManagerId> =
        sorted.iter().flat_map(|&(tm, slots)| std::iter::repeat_n(tm, slots as usize)).take(needed as usize).collect();
    debug_assert!(assigned.len() <= needed as usize);
    (assigned.len() == needed as usize).then_some(assigned)
}

/// What one deployment sends: per task manager its subtasks, where every subtask runs, and
/// which source subtasks each task manager hosts (the trigger's targets).
#[derive(Clone, Debug, Default)]
pub struct Placement {
    /// Per task manager, its subtasks (and what each restores).
    pub per_tm: BTreeMap<TaskManagerId, Vec<SubtaskDeployment>>,
    /// Every subtask's data address.
    pub locations: BTreeMap<SubtaskId, SocketAddr>,
    /// Per task manager, its source subtasks.
    pub sources_per_tm: BTreeMap<TaskManagerId, Vec<SubtaskId>>,
}

impl Placement {
    /// The task manager running `subtask`, if it is placed.
    pub fn host_of(&self, subtask: SubtaskId) -> Option<TaskManagerId> {
        self.per_tm.iter().find(|(_, subtasks)| subtasks.iter().any(|d| d.subtask == subtask)).map(|(tm, _)| *tm)
    }
}

/// Why a placement could not be built.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    /// The latest checkpoint does not restore onto this job.
    #[error("the latest checkpoint cannot be restored: {0}")]
    Restore(#[from] RestoreError),
    /// Fewer slots than the job needs.
    #[error("{given} slots given, {needed} needed")]
    TooFewSlots {
        /// Slots given.
        given: usize,
        /// Slots needed.
        needed: u32,
    },
    /// A slot's task manager has no address.
    #[error("no address for {0}")]
    UnknownTaskManager(TaskManagerId),
}

/// Places every subtask: slot `i` (on `slot_tms[i]`) runs subtask `i` of every vertex; each
/// subtask restores its share of `latest`, if any.
pub fn place(
    topology: &Topology,
    slot_tms: &[TaskManagerId],
    ips: &BTreeMap<TaskManagerId, IpAddr>,
    latest: Option<&CheckpointMetadata>,
) -> Result<Placement, PlacementError> {
    let needed = topology.slots_needed();
    if slot_tms.len() < needed as usize {
        return Err(PlacementError::TooFewSlots { given: slot_tms.len(), needed });
    }
    let mut restores = BTreeMap::new();
    if let Some(latest) = latest {
        for v in &topology.vertices {
            restores.insert(v.id, latest.restore_assignment(v.id, v.parallelism)?);
        }
    }
    let mut placement = Placement::default();
    for (slot, &tm) in slot_tms.iter().enumerate().take(needed as usize) {
        let ip = *ips.get(&tm).ok_or(PlacementError::UnknownTaskManager(tm))?;
        for (vertex, subtask) in topology.subtasks_of_slot(slot as u32) {
            let restore = restores.get(&vertex.id).map(|r| r[slot].clone());
            debug_assert!(restore.as_ref().is_none_or(|r| r.subtask == subtask.index));
            placement.per_tm.entry(tm).or_default().push(SubtaskDeployment { subtask, restore });
            placement.locations.insert(subtask, SocketAddr::new(ip, TM_DATA_PORT));
            if vertex.is_source {
                placement.sources_per_tm.entry(tm).or_default().push(subtask);
            }
        }
    }
    debug_assert_eq!(placement.locations.len(), topology.vertices.iter().map(|v| v.parallelism as usize).sum::<usize>());
    Ok(placement)
}

#[cfg(test)]
mod tests {
    use super::*;
    use floe_core::coordinator::{BlobRef, KeyGroupSlice, KeyedStateHandle, OperatorCheckpoint, SubtaskStateHandle};
    use floe_core::ids::{AttemptId, CheckpointId, SubtaskIndex};
    use floe_core::key_groups::KeyGroupRange;

    const SRC: OperatorId = OperatorId(1);
    const KEYED: OperatorId = OperatorId(3);

    fn topology(source_p: u32, keyed_p: u32) -> Topology {
        Topology {
            vertices: vec![
                VertexInfo { id: SRC, parallelism: source_p, max_parallelism: 128, is_source: true },
                VertexInfo { id: KEYED, parallelism: keyed_p, max_parallelism: 8, is_source: false },
            ],
        }
    }

    fn tm(i: u32) -> TaskManagerId {
        TaskManagerId(i)
    }

    #[test]
    fn slots_are_taken_in_task_manager_then_slot_order() {
        /// (offers, needed, expected)
        type Case<'a> = (&'a [(TaskManagerId, u32)], u32, Option<&'a [TaskManagerId]>);
        let cases: &[Case] = &[
            (&[], 1, None),
            (&[(tm(0), 1)], 2, None),
            (&[(tm(2), 1), (tm(0), 1)], 2, Some(&[tm(0), tm(2)])),
            (&[(tm(1), 2), (tm(0), 2)], 3, Some(&[tm(0), tm(0), tm(1)])),
            (&[(tm(0), 0), (tm(1), 3)], 2, Some(&[tm(1), tm(1)])),
            (&[(tm(0), 4)], 0, Some(&[])),
        ];
        for (offers, needed, want) in cases {
            assert_eq!(assign_slots(offers, *needed).as_deref(), *want, "{offers:?} needing {needed}");
        }
    }

    #[test]
    fn slot_i_runs_subtask_i_of_every_vertex_and_sources_are_listed_per_task_manager() {
        let t = topology(2, 3);
        assert_eq!(t.slots_needed(), 3);
        let ips: BTreeMap<_, IpAddr> = [(tm(0), "10.0.1.1".parse().unwrap()), (tm(1), "10.0.1.2".parse().unwrap())].into();
        let p = place(&t, &[tm(0), tm(0), tm(1)], &ips, None).unwrap();
        let subtasks = |i: u32| p.per_tm[&tm(i)].iter().map(|d| d.subtask).collect::<Vec<_>>();
        assert_eq!(subtasks(0), [SubtaskId::new(SRC, 0), SubtaskId::new(KEYED, 0), SubtaskId::new(SRC, 1), SubtaskId::new(KEYED, 1)]);
        assert_eq!(subtasks(1), [SubtaskId::new(KEYED, 2)]);
        assert_eq!(p.sources_per_tm[&tm(0)], [SubtaskId::new(SRC, 0), SubtaskId::new(SRC, 1)]);
        assert!(!p.sources_per_tm.contains_key(&tm(1)));
        assert_eq!(p.locations.len(), 5);
        assert_eq!(p.locations[&SubtaskId::new(KEYED, 2)], SocketAddr::new(ips[&tm(1)], TM_DATA_PORT));
        assert!(p.per_tm.values().flatten().all(|d| d.restore.is_none()));
        assert_eq!(p.host_of(SubtaskId::new(KEYED, 2)), Some(tm(1)));
        assert_eq!(place(&t, &[tm(0)], &ips, None).unwrap_err(), PlacementError::TooFewSlots { given: 1, needed: 3 });
        assert_eq!(place(&t, &[tm(0), tm(1), tm(7)], &ips, None).unwrap_err(), PlacementError::UnknownTaskManager(tm(7)));
    }

    fn handle(op: OperatorId, index: u32, p: u32, max_p: u32) -> SubtaskStateHandle {
        let range = KeyGroupRange::for_operator_index(max_p, p, SubtaskIndex(index));
        let keyed = (op == KEYED).then(|| KeyedStateHandle {
            blob: BlobRef { key: format!("k{index}"), len: 0, crc32: 0 },
            key_groups: range.iter().map(|kg| KeyGroupSlice { key_group: kg, offset: 0, len: 0 }).collect(),
        });
        SubtaskStateHandle { subtask: SubtaskId::new(op, index), keyed, operator: Some(BlobRef { key: format!("o{op}-{index}"), len: 1, crc32: 0 }), data_ended: false }
    }

    fn metadata(source_p: u32, keyed_p: u32) -> CheckpointMetadata {
        let op = |id, p, max_p| OperatorCheckpoint { parallelism: p, max_parallelism: max_p, subtasks: (0..p).map(|i| handle(id, i, p, max_p)).collect() };
        CheckpointMetadata {
            checkpoint_id: CheckpointId(4),
            attempt: AttemptId(2),
            triggered_at_ms: 0,
            completed_at_ms: 1,
            is_final: false,
            operators: [(SRC, op(SRC, source_p, 128)), (KEYED, op(KEYED, keyed_p, 8))].into(),
        }
    }

    #[test]
    fn a_deployment_after_a_checkpoint_restores_each_subtask_its_key_groups_even_when_rescaled() {
        let ips: BTreeMap<_, IpAddr> = [(tm(0), "10.0.1.1".parse().unwrap()), (tm(1), "10.0.1.2".parse().unwrap())].into();
        // (parallelism in the checkpoint, parallelism now)
        for (then, now) in [(2u32, 2u32), (2, 4), (4, 1)] {
            let t = topology(now, now);
            let slots = vec![tm(0); now as usize];
            let p = place(&t, &slots, &ips, Some(&metadata(then, then))).unwrap();
            let keyed: Vec<_> = p.per_tm[&tm(0)].iter().filter(|d| d.subtask.operator == KEYED).collect();
            assert_eq!(keyed.len() as u32, now);
            let mut all_groups = Vec::new();
            for d in keyed {
                let r = d.restore.as_ref().expect("restored");
                assert_eq!(r.key_group_range, KeyGroupRange::for_operator_index(8, now, d.subtask.index));
                assert_eq!(r.operator_state.len() as u32, then, "every old subtask's operator state");
                all_groups.extend(r.keyed.iter().map(|k| k.slice.key_group.0));
            }
            assert_eq!(all_groups, (0..8).collect::<Vec<_>>(), "{then} -> {now}: every key group exactly once");
        }
        // A checkpoint of another job does not restore.
        let mut other = metadata(2, 2);
        other.operators.remove(&KEYED);
        let err = place(&topology(2, 2), &[tm(0), tm(1)], &ips, Some(&other)).unwrap_err();
        assert_eq!(err, PlacementError::Restore(RestoreError::UnknownOperator(KEYED)));
    }

    #[test]
    fn each_deployment_learns_whether_its_subtask_is_finished_on_restore() {
        let ips: BTreeMap<_, IpAddr> = [(tm(0), "10.0.1.1".parse().unwrap())].into();
        // Source subtask 1 and both keyed subtasks had ended; source subtask 0 had not.
        let mut meta = metadata(2, 2);
        for op in meta.operators.values_mut() {
            for h in &mut op.subtasks {
                h.data_ended = h.subtask != SubtaskId::new(SRC, 0);
            }
        }
        let p = place(&topology(2, 2), &[tm(0), tm(0)], &ips, Some(&meta)).unwrap();
        let got: Vec<(SubtaskId, bool)> = p.per_tm[&tm(0)].iter().map(|d| (d.subtask, d.restore.as_ref().expect("restored").data_ended)).collect();
        let want = [(SRC, 0, false), (KEYED, 0, true), (SRC, 1, true), (KEYED, 1, true)].map(|(op, i, ended)| (SubtaskId::new(op, i), ended));
        assert_eq!(got, want);
        // The keyed operator, fully finished, rescales (finished on restore everywhere); the
        // partly finished source does not.
        let rescaled = place(&topology(2, 3), &[tm(0); 3], &ips, Some(&meta)).unwrap();
        let keyed: Vec<bool> = rescaled.per_tm[&tm(0)].iter().filter(|d| d.subtask.operator == KEYED).map(|d| d.restore.as_ref().expect("restored").data_ended).collect();
        assert_eq!(keyed, [true, true, true]);
        let err = place(&topology(3, 3), &[tm(0); 3], &ips, Some(&meta)).unwrap_err();
        assert_eq!(err, PlacementError::Restore(RestoreError::PartiallyFinished { operator: SRC, finished: 1, parallelism: 2, new_parallelism: 3 }));
    }

    #[test]
    fn the_plan_names_every_subtask_and_only_source_subtasks_as_sources() {
        let plan = topology(2, 3).checkpoint_plan();
        plan.validate().unwrap();
        assert_eq!(plan.all_subtasks.len(), 5);
        assert_eq!(plan.sources, [SubtaskId::new(SRC, 0), SubtaskId::new(SRC, 1)]);
    }
}
