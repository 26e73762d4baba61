// Plain data in and out of the topology module. The module is pure: no I/O, no timers, no libp2p; the
// daemon (src/p2p) and the simulator (test/sim) feed it adverts, measured RTTs and the time, and carry out
// the decisions it returns. Keep these shapes stable: both drivers depend on them.

/** What an agent says about itself for one image (carried in a gossip advert; the wire codec is p2p's). */
export interface Advert {
  peerId: string
  imageId: string
  /** Manifest root (hex): adverts for another root of the same image id are not candidates. */
  rootHex: string
  /** Increases with every advert the peer publishes; an older or equal seq is stale. */
  seq: number
  /** 0 for a seed (holds every block), else 1 + the lowest depth among its parents; null while detached. */
  depth: number | null
  heldBlocks: number
  totalBlocks: number
  childCount: number
  childLimit: number
  /** Upload in use as a fraction of the peer's upload capacity, 0..1. */
  uploadLoad: number
  /** The peer refuses agents attaching with it as their only parent (admit.ts): not a one-parent set. */
  soleFull?: boolean
}

/** An advert as this agent last received it, with what it measured of the sender. */
export interface Candidate {
  advert: Advert
  receivedAtMs: number
  /** How long the sender said the advert stays true (freshness.ts); absent: the receiver's advertTimeoutMs. */
  lifetimeMs?: number
  /** Smoothed round trip time to the peer, when measured. */
  rttMs?: number
}

/** The agent's view of one of its current parents. */
export interface ParentState {
  peerId: string
  sinceMs: number
  /** Set by the driver when a stream to the parent failed or pings went unanswered. */
  failed: boolean
}

export interface TopologyParams {
  /** Parents kept per image (k). */
  parentCount: number
  /** How often the driver calls selectParents and publishes adverts. */
  heartbeatMs: number
  /** A candidate whose last advert is older than this (or than the lifetime the advert gives, if longer) is gone. */
  advertTimeoutMs: number
  /** A new candidate must score this much better (fraction) than the worst parent to replace it. */
  replaceMargin: number
  /** A parent is kept at least this long before a better candidate may replace it (flap damping). */
  minParentHoldMs: number
  /** Children this agent admits per image. */
  childLimit: number
  /**
   * Children per image that have this agent as their only parent (admit.ts): an agent attaching with us as
   * its one parent is refused beyond this. 0 or absent: no bound but childLimit.
   */
  soleChildLimit?: number
  /**
   * Depths at or beyond this are treated as detached (bounds any count-to-infinity after a transient
   * loop built from stale adverts). Default 64.
   */
  maxDepth?: number
  /** Scoring weights (see score.ts); DEFAULT_SCORE_PARAMS when absent. */
  score?: ScoreParams
}

/**
 * Weights of the parent score (score.ts documents each component). Every component is a utility in
 * [0, 1]; the score is their weighted mean, so it is in [0, 1] and `replaceMargin` is a plain fraction.
 */
export interface ScoreParams {
  /** Weight of the round-trip component u = rttRefMs / (rttRefMs + rttMs). */
  rttWeight: number
  /** RTT at which the RTT utility is 0.5. */
  rttRefMs: number
  /** RTT assumed for a candidate not yet measured. */
  unknownRttMs: number
  /** Weight of u = 1 - uploadLoad. */
  loadWeight: number
  /** Weight of u = heldBlocks / totalBlocks (a seed has 1). */
  holdWeight: number
  /** Weight of u = 1 / (1 + depth): closer to a seed is better. */
  depthWeight: number
  /** Weight of u = free child slots / childLimit (a parent with room is less contended). */
  slotWeight: number
  /** Weight of a stable pseudo-random u = hash(self, peer): spreads agents that see the same candidates. */
  tieBreakWeight: number
}

export interface SelectionInput {
  nowMs: number
  selfPeerId: string
  /** True when this agent holds every block: seeds have no parents. */
  selfIsSeed: boolean
  candidates: readonly Candidate[]
  parents: readonly ParentState[]
  /** Peers that sent corrupt data or refused us recently: never chosen. */
  excluded: ReadonlySet<string>
  params: TopologyParams
  /**
   * The depth this agent last advertised (null while detached). While attached, only candidates of lower
   * depth than this are feasible and a parent whose depth rose to it or beyond is dropped, so the agent's
   * depth never grows while attached (the loop-freedom condition of distance-vector protocols such as
   * Babel). Absent: treated as null.
   */
  selfDepth?: number | null
  /**
   * Children currently attached to this agent for the image. A detached agent with children takes only a
   * seed until they have left (they drop it on seeing its null depth), so it cannot attach below them.
   */
  childCount?: number
  /** When given, adverts for another image id or manifest root are not candidates. */
  imageId?: string
  rootHex?: string
}

export interface SelectionResult {
  /** The parent set to hold after this step (existing ones first, in preference order). */
  parents: string[]
  added: string[]
  dropped: Array<{ peerId: string, reason: 'failed' | 'silent' | 'replaced' | 'depth' | 'excluded' | 'seed' }>
  /** This agent's depth given the chosen parents (0 if seed, null if no parent). */
  depth: number | null
  /**
   * True when no candidate qualified and the chosen parent is a seed taken regardless of its free slots
   * (the seed may refuse; the driver then excludes it for a while).
   */
  fallbackToSeed?: boolean
  /** Score of each chosen parent, same order as `parents` (for status output and tests). */
  scores?: number[]
}
