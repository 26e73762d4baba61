// Parent side: whether to take one more child for an image. Fan-out is bounded twice:
// - childLimit: children in all (slots);
// - soleChildLimit: children that have this agent as their only parent. Such a child takes its whole boot
//   from our one uplink, where a child that stripes over p parents takes about 1/p of it. Why: at the start of
//   a wave the only agent at depth 1 (the origin's one child) is the only candidate for everyone else, who all
//   attach to it with that one parent. With slots alone it took up to childLimit of them, and its uplink carried
//   that many copies of the boot (bench:testbed at 100 Mb/s: 4-6 such children, 15-28 s; 2, 12-13 s). A child
//   refused here goes one level down a heartbeat later, where it finds several parents.
// The bound is a relay's: a seed (depth 0) has the slots it was given (the origin: p2p.originChildLimit, 1 by
// default), and free seed slots left by it drew whole levels up to the seed once their parents' hold time had
// passed, dissolving subtrees on the way (topology-property's subtree test).
// The sole-child bound refuses only an agent that attaches from nothing (detached, no child of its own):
// refusing one that moves here would leave it, and its subtree, without a path. It refuses such an agent however
// many parents it asks: one that asks three full relays and a free one ends up the free one's sole child just
// the same. The count is of the children's own reports (each ADMIT says how many parents the child has,
// counting us), so a child that asked for three and was given one counts as sole from its next renewal. Why:
// in a 1,000-agent wave back to back the top levels filled with children that asked for three parents and got
// one; their relays (6 of 8 children sole) each uploaded 6-8 copies of the boot, and the wave waited on them
// (test/sim: the slowest agent 3.50 s, network only; 1.75 s with this rule). A relay at its bound says so in its
// advert (soleFull), and a detached agent does not ask it (select.ts).
// It still advertises its free slots: advertising it as full lowered its slot score for its own children,
// which then swapped parents back and forth (topology-property's no-flapping test).

export interface AdmitInput {
  childCount: number
  childLimit: number
  /** A child asking again (reconnect, repeated request) keeps its slot. */
  isAlreadyChild: boolean
  /** The asker is banned or otherwise excluded by this agent. */
  isExcluded?: boolean
  /** Our own upload in use, 0..1; above maxUploadLoad new children are refused. */
  uploadLoad?: number
  maxUploadLoad?: number
  /** A detached agent (no parents, not a seed) cannot serve what it does not have: it refuses children. */
  selfDepth?: number | null
  /** Our children now that have us as their only parent, by their last report (the asker not counted). */
  soleChildren?: number
  /** The asker attaches from nothing: detached, no child of its own (see the top). */
  attaching?: boolean
  /** Bound on sole children; 0 or absent: none. */
  soleChildLimit?: number
}

export type AdmitRefusal = 'full' | 'excluded' | 'overloaded' | 'detached'

export interface AdmitResult {
  admit: boolean
  reason?: AdmitRefusal
}

export function admitChild (input: AdmitInput): AdmitResult {
  if (input.isExcluded === true) return { admit: false, reason: 'excluded' }
  if (input.selfDepth === null) return { admit: false, reason: 'detached' }
  if (input.isAlreadyChild) return { admit: true }
  if (!(input.childCount < input.childLimit)) return { admit: false, reason: 'full' }
  const soleLimit = input.soleChildLimit ?? 0
  if (soleLimit > 0 && input.selfDepth !== 0 && input.attaching === true && (input.soleChildren ?? 0) >= soleLimit) {
    return { admit: false, reason: 'full' }
  }
  if (input.uploadLoad !== undefined && input.maxUploadLoad !== undefined && input.uploadLoad > input.maxUploadLoad) {
    return { admit: false, reason: 'overloaded' }
  }
  return { admit: true }
}
