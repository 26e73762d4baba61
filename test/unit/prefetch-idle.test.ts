import { test } from 'node:test'
import assert from 'node:assert/strict'
import { idleStep, meanUtilization, newTokenBucket, tryTake, IDLE_INITIAL, type IdleState, type UtilizationSample } from '../../src/prefetch/index.js'

const params = { idleBelow: 0.3, busyAbove: 0.6, idleHoldMs: 1000, sampleWindowMs: 500 }

test('idle detection: quiet for the hold time, busy at once, hysteresis between thresholds', { timeout: 5_000 }, () => {
  let s: IdleState = IDLE_INITIAL
  const step = (nowMs: number, utilization: number, pendingOnDemand = 0): boolean => {
    s = idleStep(s, { nowMs, samples: [{ tMs: nowMs, utilization }], pendingOnDemand }, params)
    return s.idle
  }
  assert.equal(step(0, 0.1), false)
  assert.equal(step(500, 0.1), false)
  assert.equal(step(1000, 0.1), true, 'quiet for idleHoldMs')
  assert.equal(step(1100, 0.5), true, 'between thresholds: stays idle')
  assert.equal(step(1200, 0.7), false, 'above busyAbove: busy at once')
  assert.equal(step(1300, 0.5), false, 'between thresholds: stays busy')
  assert.equal(step(1400, 0.2), false, 'quiet again, hold restarts')
  assert.equal(step(2399, 0.2), false)
  assert.equal(step(2400, 0.2), true)
  assert.equal(step(2500, 0.0, 1), false, 'an on-demand read pending: busy at once')
  assert.equal(step(2600, 0.0), false)
  assert.equal(step(3600, 0.0), true)
})

test('utilization is the mean of recent samples; junk samples are ignored', { timeout: 5_000 }, () => {
  const samples: UtilizationSample[] = [{ tMs: 0, utilization: 1 }, { tMs: 600, utilization: 0.2 }, { tMs: 900, utilization: 0.4 }, { tMs: 950, utilization: NaN }, { tMs: 2000, utilization: 1 }]
  assert.equal(meanUtilization(samples, 1000, 500), (0.2 + 0.4) / 2)
  assert.equal(meanUtilization([], 1000, 500), 0)
  assert.equal(meanUtilization([{ tMs: 1000, utilization: 7 }], 1000, 500), 1)
})

test('token bucket: burst, refill at the rate, wait time, debt for oversized takes', { timeout: 5_000 }, () => {
  const p = { rateBytesPerSec: 1000, burstBytes: 500 }
  let b = newTokenBucket(p, 0)
  let r = tryTake(b, p, 0, 400); assert.equal(r.ok, true); b = r.bucket
  r = tryTake(b, p, 0, 400); assert.equal(r.ok, false); assert.equal(r.waitMs, 300); b = r.bucket
  r = tryTake(b, p, 299, 400); assert.equal(r.ok, false); b = r.bucket
  r = tryTake(b, p, 300, 400); assert.equal(r.ok, true); b = r.bucket
  assert.equal(b.tokens, 0)
  // Refill caps at the burst.
  r = tryTake(b, p, 100_000, 1); assert.equal(r.bucket.tokens, 499); b = r.bucket
  // Larger than the burst: allowed from a full bucket, leaves debt.
  b = newTokenBucket(p, 0)
  r = tryTake(b, p, 0, 2000); assert.equal(r.ok, true); assert.equal(r.bucket.tokens, -1500); b = r.bucket
  r = tryTake(b, p, 1000, 100); assert.equal(r.ok, false); assert.equal(r.waitMs, 600) // -500 tokens at 1 s
  // A clock stepping back adds nothing.
  b = { tokens: 0, lastMs: 1000 }
  r = tryTake(b, p, 500, 1); assert.equal(r.ok, false); assert.equal(r.bucket.tokens, 0)
  // Over any span, takes stay within burst + rate x time.
  b = newTokenBucket(p, 0)
  let taken = 0
  for (let t = 0; t <= 10_000; t += 7) {
    r = tryTake(b, p, t, 64); b = r.bucket
    if (r.ok) taken += 64
    assert.ok(taken <= 500 + t, `${taken} by ${t}`)
  }
  assert.ok(taken >= 9_500)
})
