// Pure idle detection with hysteresis, and a pure token bucket. Time is passed in; nothing here keeps a timer.
//
// Idle means: no on-demand read pending, and foreground link utilization (pass traffic that is NOT this
// agent's own prefetch, or prefetch would see its own load and stop itself) has stayed below
// `idleBelow` for `idleHoldMs`. Busy comes at once: any pending on-demand read, or utilization above
// `busyAbove`. Between the two thresholds the state does not change (hysteresis).

export interface UtilizationSample {
  tMs: number
  /** Fraction of link capacity in use, 0..1. */
  utilization: number
}

export interface IdleParams {
  idleBelow: number
  busyAbove: number
  idleHoldMs: number
  /** Samples older than this are ignored; the mean of the rest is the utilization. */
  sampleWindowMs: number
}

export const DEFAULT_IDLE_PARAMS: IdleParams = { idleBelow: 0.3, busyAbove: 0.6, idleHoldMs: 2000, sampleWindowMs: 1000 }

export interface IdleState {
  readonly idle: boolean
  /** Since when the inputs have been quiet (undefined while not quiet). */
  readonly quietSinceMs: number | undefined
}

export const IDLE_INITIAL: IdleState = { idle: false, quietSinceMs: undefined }

export interface IdleInput {
  nowMs: number
  samples: readonly UtilizationSample[]
  pendingOnDemand: number
}

export function meanUtilization (samples: readonly UtilizationSample[], nowMs: number, windowMs: number): number {
  let sum = 0
  let n = 0
  for (const s of samples) {
    if (s.tMs > nowMs - windowMs && s.tMs <= nowMs && Number.isFinite(s.utilization)) {
      sum += Math.min(1, Math.max(0, s.utilization))
      n++
    }
  }
  return n === 0 ? 0 : sum / n
}

export function idleStep (state: IdleState, input: IdleInput, params: IdleParams = DEFAULT_IDLE_PARAMS): IdleState {
  const u = meanUtilization(input.samples, input.nowMs, params.sampleWindowMs)
  if (input.pendingOnDemand > 0 || u > params.busyAbove) return { idle: false, quietSinceMs: undefined }
  if (state.idle) return state
  if (u >= params.idleBelow) return { idle: false, quietSinceMs: undefined }
  const quietSinceMs = state.quietSinceMs ?? input.nowMs
  return { idle: input.nowMs - quietSinceMs >= params.idleHoldMs, quietSinceMs }
}

export interface TokenBucketParams {
  rateBytesPerSec: number
  burstBytes: number
}

export interface TokenBucket {
  readonly tokens: number
  readonly lastMs: number
}

export function newTokenBucket (params: TokenBucketParams, nowMs: number): TokenBucket {
  return { tokens: params.burstBytes, lastMs: nowMs }
}

export function refill (bucket: TokenBucket, params: TokenBucketParams, nowMs: number): TokenBucket {
  const elapsedMs = Math.max(0, nowMs - bucket.lastMs) // a clock stepping back adds nothing
  const tokens = Math.min(params.burstBytes, bucket.tokens + elapsedMs * params.rateBytesPerSec / 1000)
  return { tokens, lastMs: Math.max(nowMs, bucket.lastMs) }
}

export interface TakeResult {
  ok: boolean
  bucket: TokenBucket
  /** When not ok: how long until the take would succeed. */
  waitMs: number
}

/**
 * Takes `bytes` if the bucket holds them. A take larger than the burst succeeds from a full bucket and
 * leaves it in debt, so oversized batches are slowed, not starved.
 */
export function tryTake (bucket: TokenBucket, params: TokenBucketParams, nowMs: number, bytes: number): TakeResult {
  const b = refill(bucket, params, nowMs)
  const need = Math.min(bytes, params.burstBytes)
  if (b.tokens >= need) return { ok: true, bucket: { tokens: b.tokens - bytes, lastMs: b.lastMs }, waitMs: 0 }
  const waitMs = params.rateBytesPerSec > 0 ? Math.ceil((need - b.tokens) * 1000 / params.rateBytesPerSec) : Infinity
  return { ok: false, bucket: b, waitMs }
}
