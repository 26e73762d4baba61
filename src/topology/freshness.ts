// When a candidate's advert stops counting: its sender falls silent. An advert may say how long it stays
// true (`lifetimeMs`: a quiet sender keeps itself alive less often, advert-policy.ts), and a receiver takes
// that, within bounds, over its own timeout. A sender can only lengthen it: a receiver never forgets an
// advert sooner than its own `advertTimeoutMs`, so an old or odd sender cannot make it flap.

import type { Candidate, TopologyParams } from './types.js'

/** Longest lifetime a receiver grants an advert (a quiet sender keeps alive every 60 s at most; 3x that, rounded up). */
export const MAX_ADVERT_LIFETIME_MS = 300_000

/** How long after its receipt the candidate's advert counts. */
export function advertLifetimeMs (candidate: Pick<Candidate, 'lifetimeMs'>, params: Pick<TopologyParams, 'advertTimeoutMs'>): number {
  return Math.max(params.advertTimeoutMs, Math.min(candidate.lifetimeMs ?? 0, MAX_ADVERT_LIFETIME_MS))
}

/** The sender said nothing within the advert's lifetime: it counts as gone. */
export function isSilent (candidate: Pick<Candidate, 'receivedAtMs' | 'lifetimeMs'>, nowMs: number, params: Pick<TopologyParams, 'advertTimeoutMs'>): boolean {
  return nowMs - candidate.receivedAtMs > advertLifetimeMs(candidate, params)
}
