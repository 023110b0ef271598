//! Which node each rank runs on, and each rank's partner on another node.

use mpi::collective::{CommunicatorCollectives, Root};
use mpi::topology::Communicator;

/// Environment variable splitting the ranks of one machine into simulated nodes, for tests:
/// `CKPT_SIMULATE_NODES=N` puts rank r on node `r * N / size`.
pub const SIMULATE_NODES_VAR: &str = "CKPT_SIMULATE_NODES";

/// The ranks' nodes and the partner ring, the same on every rank.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    /// Node index of every rank (0-based, in order of each node's lowest rank).
    pub node_of: Vec<u32>,
    /// Number of nodes.
    pub nodes: u32,
    /// Whether the nodes are simulated ([`SIMULATE_NODES_VAR`]).
    pub simulated: bool,
    /// The rank that holds each rank's partner copies (on another node, when there are at
    /// least two nodes): a permutation.
    pub holder: Vec<u32>,
}

impl Topology {
    /// The number of simulated nodes [`SIMULATE_NODES_VAR`] asks for, if set; `Err` when it
    /// is not a number from 1 to `size`. No communication.
    pub fn simulated_nodes(size: u32) -> Result<Option<u32>, String> {
        match std::env::var(SIMULATE_NODES_VAR) {
            Ok(v) => match v.trim().parse::<u32>() {
                Ok(n) if n >= 1 && n <= size => Ok(Some(n)),
                _ => Err(format!(
                    "{SIMULATE_NODES_VAR}={v:?}: expected a number of nodes from 1 to {size} (the ranks)"
                )),
            },
            Err(_) => Ok(None),
        }
    }

    /// Finds the nodes (`simulated` of them, in blocks of ranks, or else MPI's shared-memory
    /// split) and builds the partner ring. Collective.
    pub fn find<C: Communicator>(comm: &C, simulated: Option<u32>) -> Topology {
        let size = comm.size() as u32;
        let rank = comm.rank() as u32;
        let leaders: Vec<u32> = match simulated {
            Some(n) => (0..size)
                .map(|r| {
                    let node = (u64::from(r) * u64::from(n) / u64::from(size)) as u32;
                    // The node's lowest rank.
                    (0..size)
                        .find(|&q| (u64::from(q) * u64::from(n) / u64::from(size)) as u32 == node)
                        .unwrap_or(r)
                })
                .collect(),
            None => {
                let node_comm = comm.split_shared(0);
                let mut leader = rank;
                node_comm.process_at_rank(0).broadcast_into(&mut leader);
                let mut all = vec![0u32; size as usize];
                comm.all_gather_into(&leader, &mut all[..]);
                all
            }
        };
        Topology::from_leaders(&leaders, simulated.is_some())
    }

    /// The topology of ranks whose nodes are named by their lowest rank (`leaders[r]`).
    pub fn from_leaders(leaders: &[u32], simulated: bool) -> Topology {
        let mut distinct: Vec<u32> = leaders.to_vec();
        distinct.sort_unstable();
        distinct.dedup();
        let node_of: Vec<u32> = leaders
            .iter()
            .map(|l| distinct.binary_search(l).unwrap_or(0) as u32)
            .collect();
        // Ring over the ranks ordered by (index within the node, node): consecutive ranks are
        // on different nodes whenever the nodes have the same number of ranks.
        let mut order: Vec<(u32, u32, u32)> = (0..node_of.len() as u32)
            .map(|r| {
                let local = (0..r)
                    .filter(|&q| node_of[q as usize] == node_of[r as usize])
                    .count();
                (local as u32, node_of[r as usize], r)
            })
            .collect();
        order.sort_unstable();
        let mut holder = vec![0u32; node_of.len()];
        for i in 0..order.len() {
            holder[order[i].2 as usize] = order[(i + 1) % order.len()].2;
        }
        Topology {
            nodes: distinct.len() as u32,
            node_of,
            simulated,
            holder,
        }
    }

    /// The rank whose partner copies `rank` holds.
    pub fn held_by(&self, rank: u32) -> u32 {
        self.holder
            .iter()
            .position(|&h| h == rank)
            .unwrap_or(rank as usize) as u32
    }

    /// `Err` naming the problem when some rank's partner is on its own node (fewer than two
    /// nodes, or nodes of very different sizes).
    pub fn check_partners(&self) -> Result<(), String> {
        if self.nodes < 2 {
            return Err(format!(
                "partner copies need at least two nodes; this job runs on {} (set {SIMULATE_NODES_VAR} to try them on one machine)",
                self.nodes
            ));
        }
        for (r, &h) in self.holder.iter().enumerate() {
            if self.node_of[r] == self.node_of[h as usize] {
                return Err(format!(
                    "partner copies: rank {r}'s partner, rank {h}, is on its own node {} (the nodes hold very different numbers of ranks)",
                    self.node_of[r]
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_of_ranks_pair_across_nodes() {
        // 8 ranks on 4 nodes of 2.
        let t = Topology::from_leaders(&[0, 0, 2, 2, 4, 4, 6, 6], true);
        assert_eq!(t.nodes, 4);
        assert_eq!(t.node_of, vec![0, 0, 1, 1, 2, 2, 3, 3]);
        t.check_partners().unwrap();
        let mut seen = t.holder.clone();
        seen.sort_unstable();
        assert_eq!(seen, (0..8).collect::<Vec<_>>(), "a permutation");
        for r in 0..8u32 {
            assert_eq!(t.held_by(t.holder[r as usize]), r);
        }
    }

    #[test]
    fn one_node_or_lopsided_nodes_cannot_hold_partners() {
        let t = Topology::from_leaders(&[0, 0, 0], false);
        assert!(t
            .check_partners()
            .unwrap_err()
            .contains("at least two nodes"));
        let t = Topology::from_leaders(&[0, 0, 0, 3], false);
        assert!(t.check_partners().unwrap_err().contains("its own node"));
    }
}
