// When an agent publishes its advert for an image. Every advert copy costs every agent of the topic a
// signature verification in gossipsub's receive path (about 30 % of an agent's CPU in an 8-host boot when
// adverts went out every heartbeat and up to every 250 ms on new blocks), so an advert goes out only when it
// says something a peer acts on, soon for what changes the tree and bounded for the rest:
//   at once: attached (a depth after none), so the next tree level can form;
//   urgent (at most every minIntervalMs): depth, full/not full, sole-full or not, child limit, a held-fraction step crossed,
//     became a seed, a new profile, started or stopped booting the image, a peer subscribed (it knows nothing
//     of us yet);
//   soft (at most every softIntervalMs): other held blocks (the summary), child count, load moved a step;
//   nothing new: a keep-alive, keepAliveMs after news, then twice as long after each keep-alive with nothing new,
//     up to maxKeepAliveMs. Each advert says how long it stays true (ADVERT_LIFETIME_KEEPALIVES x the interval to
//     the next keep-alive), so peers do not forget a quiet sender. Liveness does not rest on keep-alives: a peer
//     whose connection closes stops being a source at once, and its advert then counts for the receiver's own
//     timeout only. At rest, in a cluster of seeds, keep-alives every 5 s were a third of an agent's CPU (each is
//     signed, and verified by every agent of the topic).
// Pure: the service and the simulator call it with their own clocks.

import type { Advert } from '../topology/types.js'

export interface AdvertPolicyParams {
  minIntervalMs: number
  /**
   * A forced advert (a peer subscribed or joined our mesh: it knows nothing of us) may go this soon after the
   * last one while the sender's forced budget lasts (forcedBurst, one more per minIntervalMs): see
   * nextAdvertDueMs.
   */
  forcedMinIntervalMs: number
  forcedBurst: number
  softIntervalMs: number
  keepAliveMs: number
  /** A quiet sender's keep-alive interval doubles up to this. */
  maxKeepAliveMs: number
  /** The held fraction is cut into this many steps; crossing one is urgent. */
  heldSteps: number
  /** A change of advertised upload load (0..1) by this much is worth a soft advert. */
  loadStep: number
}

export const DEFAULT_ADVERT_POLICY: AdvertPolicyParams = {
  minIntervalMs: 250,
  forcedMinIntervalMs: 25,
  forcedBurst: 4,
  softIntervalMs: 2000,
  keepAliveMs: 5000,
  maxKeepAliveMs: 60_000,
  heldSteps: 16,
  loadStep: 0.25
}

/** What an advert says that the policy compares. */
export type AdvertFacts = Pick<Advert, 'depth' | 'heldBlocks' | 'totalBlocks' | 'childCount' | 'childLimit' | 'uploadLoad' | 'soleFull'> & {
  profileVersion?: string
  /** VMs of the image the sender boots now (peers hold idle prefetch while any boots). */
  booting?: number
}

/** An advert stays true this many keep-alive intervals: two keep-alives may be lost or late. */
export const ADVERT_LIFETIME_KEEPALIVES = 3

/**
 * The keep-alive interval after publishing an advert: the base after news (a change a peer acts on), twice the
 * last after a keep-alive that said nothing new, unchanged after a forced one (a peer subscribed; nothing changed).
 */
export function nextKeepAliveMs (kind: 'news' | 'keep-alive' | 'forced', lastKeepAliveMs: number, params: AdvertPolicyParams = DEFAULT_ADVERT_POLICY): number {
  if (kind === 'news' || !(lastKeepAliveMs >= params.keepAliveMs)) return params.keepAliveMs
  if (kind === 'forced') return lastKeepAliveMs
  return Math.min(2 * lastKeepAliveMs, Math.max(params.keepAliveMs, params.maxKeepAliveMs))
}

/** What kind of advert publishing `facts` after `last` is (see nextKeepAliveMs). */
export function advertKind (facts: AdvertFacts, last: AdvertFacts | undefined, forced: boolean, params: AdvertPolicyParams = DEFAULT_ADVERT_POLICY): 'news' | 'keep-alive' | 'forced' {
  if (last === undefined || urgentChange(facts, last, params) || softChange(facts, last, params)) return 'news'
  return forced ? 'forced' : 'keep-alive'
}

/**
 * When the next advert is due (ms, absolute; may be in the past: publish now): soon for news, else the
 * keep-alive (`keepAliveMs` after the last advert, as nextKeepAliveMs grew it).
 */
export function nextAdvertDueMs (input: {
  facts: AdvertFacts
  last: AdvertFacts | undefined
  lastPublishMs: number
  /** A peer just subscribed: tell it soon whatever changed. */
  forced?: boolean
  /** The sender's forced budget has an advert left (forcedBudgetAt): a forced advert may go early. */
  forcedEarly?: boolean
  /** The keep-alive interval now (nextKeepAliveMs); absent: params.keepAliveMs. */
  keepAliveMs?: number
  params?: AdvertPolicyParams
}): number {
  const p = input.params ?? DEFAULT_ADVERT_POLICY
  const { facts, last, lastPublishMs } = input
  // Attached (a depth after none): at once. Would-be children pick only attached agents, so in a wave each tree
  // level formed one minIntervalMs after the level above, and agents still without a parent read from the
  // origin meanwhile (the simulator at 10k agents: slowest 73 s and the origin 0.76 GB, against 38.7 s and
  // 0.10 GB with no minimum). At most once per attach, and the heartbeat bounds how often an agent attaches.
  if (last !== undefined && last.depth === null && facts.depth !== null) return lastPublishMs
  // A new subscriber: soon. At an image's first boot wave every host subscribes within ~100 ms, the first
  // forced advert went out before gossipsub had a stream to most of them, and the next waited minIntervalMs:
  // a lone host's first read waited 220 ms for its first parent (bench:testbed --hosts 1), a wave's first
  // tree level as long. Early only within the sender's own budget, so its rate stays under what receivers
  // accept from one author (adverts.ts: 2 per minIntervalMs and a burst of 20).
  if (input.forced === true && input.forcedEarly === true) return lastPublishMs + Math.min(p.forcedMinIntervalMs, p.minIntervalMs)
  if (last === undefined || input.forced === true || urgentChange(facts, last, p)) return lastPublishMs + p.minIntervalMs
  if (softChange(facts, last, p)) return lastPublishMs + p.softIntervalMs
  return lastPublishMs + Math.max(input.keepAliveMs ?? 0, p.keepAliveMs)
}

function step (held: number, total: number, steps: number): number {
  return total <= 0 ? 0 : Math.floor(held * steps / total)
}

function isFull (f: AdvertFacts): boolean {
  return f.childCount >= f.childLimit
}

/** The urgent part of a change in blocks held alone: a held-fraction step crossed, or all blocks held (or no longer). */
export function heldStepCrossed (heldBlocks: number, last: AdvertFacts, p: AdvertPolicyParams = DEFAULT_ADVERT_POLICY): boolean {
  return step(heldBlocks, last.totalBlocks, p.heldSteps) !== step(last.heldBlocks, last.totalBlocks, p.heldSteps) ||
    (heldBlocks === last.totalBlocks) !== (last.heldBlocks === last.totalBlocks)
}

export function urgentChange (f: AdvertFacts, last: AdvertFacts, p: AdvertPolicyParams = DEFAULT_ADVERT_POLICY): boolean {
  return f.depth !== last.depth ||
    isFull(f) !== isFull(last) ||
    f.childLimit !== last.childLimit ||
    (f.soleFull === true) !== (last.soleFull === true) ||
    f.totalBlocks !== last.totalBlocks ||
    heldStepCrossed(f.heldBlocks, last, p) ||
    f.profileVersion !== last.profileVersion ||
    ((f.booting ?? 0) > 0) !== ((last.booting ?? 0) > 0)
}

export function softChange (f: AdvertFacts, last: AdvertFacts, p: AdvertPolicyParams = DEFAULT_ADVERT_POLICY): boolean {
  return f.heldBlocks !== last.heldBlocks || f.childCount !== last.childCount || Math.abs(f.uploadLoad - last.uploadLoad) >= p.loadStep
}

/** The sender's forced-advert budget (a token bucket): `tokens` left as of `atMs`. */
export interface ForcedBudget { tokens: number, atMs: number }

/** The budget at `nowMs`: refilled one per minIntervalMs, up to forcedBurst. */
export function forcedBudgetAt (budget: ForcedBudget | undefined, nowMs: number, params: AdvertPolicyParams = DEFAULT_ADVERT_POLICY): ForcedBudget {
  if (budget === undefined) return { tokens: params.forcedBurst, atMs: nowMs }
  const refill = params.minIntervalMs > 0 ? (nowMs - budget.atMs) / params.minIntervalMs : Infinity
  return { tokens: Math.min(params.forcedBurst, budget.tokens + Math.max(0, refill)), atMs: nowMs }
}

/** The budget after a forced advert sent at `nowMs` sooner than minIntervalMs after the last one. */
export function forcedBudgetTake (budget: ForcedBudget | undefined, nowMs: number, params: AdvertPolicyParams = DEFAULT_ADVERT_POLICY): ForcedBudget {
  const now = forcedBudgetAt(budget, nowMs, params)
  return { tokens: Math.max(0, now.tokens - 1), atMs: nowMs }
}
