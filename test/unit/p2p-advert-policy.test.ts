import { test } from 'node:test'
import assert from 'node:assert/strict'
import {
  ADVERT_LIFETIME_KEEPALIVES, DEFAULT_ADVERT_POLICY as P, advertKind, forcedBudgetAt, forcedBudgetTake, heldStepCrossed, nextAdvertDueMs, nextKeepAliveMs, urgentChange, type AdvertFacts
} from '../../src/p2p/advert-policy.js'
import { MAX_ADVERT_LIFETIME_MS } from '../../src/topology/index.js'
import { ADVERT_BURST } from '../../src/p2p/advert-budget.js'

const base: AdvertFacts = { depth: 2, heldBlocks: 100, totalBlocks: 16_384, childCount: 1, childLimit: 8, uploadLoad: 0.1 }
const due = (facts: AdvertFacts, last: AdvertFacts | undefined, forced = false): number =>
  nextAdvertDueMs({ facts, last, lastPublishMs: 10_000, forced }) - 10_000

test('advert policy: tree changes are urgent, content changes bounded, silence gets a keep-alive', { timeout: 5000 }, () => {
  assert.equal(due(base, undefined), P.minIntervalMs, 'first advert')
  assert.equal(due(base, base), P.keepAliveMs, 'nothing new: keep-alive only')
  assert.equal(due(base, base, true), P.minIntervalMs, 'a new subscriber')
  // urgent
  assert.equal(due({ ...base, depth: 1 }, base), P.minIntervalMs, 'depth')
  assert.equal(due({ ...base, depth: null }, base), P.minIntervalMs, 'detached')
  assert.equal(due(base, { ...base, depth: null }), 0, 'attached: at once, so children can pick this agent')
  assert.equal(due({ ...base, depth: null }, { ...base, depth: null, heldBlocks: 1 }), P.softIntervalMs, 'still detached: no hurry')
  assert.equal(due({ ...base, childCount: 8 }, base), P.minIntervalMs, 'became full')
  assert.equal(due(base, { ...base, childCount: 8 }), P.minIntervalMs, 'no longer full')
  assert.equal(due({ ...base, heldBlocks: 16_384 / P.heldSteps }, base), P.minIntervalMs, 'held step crossed')
  assert.equal(due({ ...base, heldBlocks: 16_384, depth: 0 }, { ...base, heldBlocks: 16_383 }), P.minIntervalMs, 'became a seed')
  assert.equal(due({ ...base, profileVersion: 'aa' }, base), P.minIntervalMs, 'new profile')
  // soft
  assert.equal(due({ ...base, heldBlocks: 101 }, base), P.softIntervalMs, 'one more block')
  assert.equal(due({ ...base, childCount: 2 }, base), P.softIntervalMs, 'child count, not full')
  assert.equal(due({ ...base, uploadLoad: 0.1 + P.loadStep + 0.01 }, base), P.softIntervalMs, 'load moved a step')
  assert.equal(due({ ...base, uploadLoad: 0.2 }, base), P.keepAliveMs, 'load noise is not news')
})

test('advert policy: adverts per agent during a boot that adds a block every 10 ms stay bounded', { timeout: 5000 }, () => {
  // A simulated 20 s boot: blocks arrive continuously (2,000 of 16,384: one held step crossed at 1,024).
  let last: AdvertFacts | undefined
  let lastMs = -Infinity
  let sent = 0
  for (let now = 0; now < 20_000; now += 1) {
    const facts = { ...base, heldBlocks: 100 + Math.floor(now / 10) }
    if (nextAdvertDueMs({ facts, last, lastPublishMs: lastMs }) <= now) { last = facts; lastMs = now; sent++ }
  }
  // One at start, then one per soft interval at most, plus the step crossing.
  assert.ok(sent <= 1 + 20_000 / P.softIntervalMs + 2, `sent ${sent}`)
  assert.ok(sent >= 20_000 / P.softIntervalMs - 1, `sent ${sent}: peers must still hear of new blocks`)
})

test('advert policy: heldStepCrossed is exactly the urgent part of a change in blocks held', { timeout: 5000 }, () => {
  // adverts.ts skips evaluating a block arrival when an advert is due anyway unless this holds: it must agree
  // with urgentChange for every held count when nothing else changed.
  const total = base.totalBlocks
  for (const lastHeld of [0, 100, total / P.heldSteps - 1, total / P.heldSteps, total - 1, total]) {
    const last = { ...base, heldBlocks: lastHeld }
    for (let held = 0; held <= total; held += held < 2_100 || held > total - 3 ? 1 : 97) {
      assert.equal(heldStepCrossed(held, last), urgentChange({ ...last, heldBlocks: held }, last), `held ${held} after ${lastHeld}`)
    }
  }
  assert.equal(heldStepCrossed(101, base), false, 'one more block is not urgent')
  assert.equal(heldStepCrossed(total / P.heldSteps, base), true, 'a step crossed')
  assert.equal(heldStepCrossed(total, { ...base, heldBlocks: total - 1 }), true, 'the image completed')
})

test('advert policy: a quiet sender keeps itself alive less and less often, up to a bound; news starts over', { timeout: 5000 }, () => {
  const intervals: number[] = []
  let keepAliveMs = 0
  let last: AdvertFacts | undefined
  let lastMs = 0
  // A quiet seed: one advert with news, then only keep-alives, published when due.
  for (let i = 0; i < 8; i++) {
    const dueMs = nextAdvertDueMs({ facts: base, last, lastPublishMs: lastMs, keepAliveMs })
    keepAliveMs = nextKeepAliveMs(advertKind(base, last, false), keepAliveMs)
    intervals.push(keepAliveMs)
    last = base; lastMs = Math.max(dueMs, lastMs)
  }
  assert.deepEqual(intervals, [5_000, 10_000, 20_000, 40_000, 60_000, 60_000, 60_000, 60_000])
  assert.equal(P.keepAliveMs, 5_000); assert.equal(P.maxKeepAliveMs, 60_000)
  assert.equal(nextAdvertDueMs({ facts: base, last: base, lastPublishMs: 1_000, keepAliveMs: 60_000 }), 61_000, 'the next keep-alive waits the grown interval')
  assert.equal(nextAdvertDueMs({ facts: { ...base, childCount: 2 }, last: base, lastPublishMs: 1_000, keepAliveMs: 60_000 }), 1_000 + P.softIntervalMs, 'news is not held back')
  // News resets; a forced advert (a peer subscribed) neither grows nor resets it.
  assert.equal(nextKeepAliveMs(advertKind({ ...base, childCount: 2 }, base, false), 60_000), P.keepAliveMs)
  assert.equal(nextKeepAliveMs(advertKind(base, base, true), 40_000), 40_000)
  assert.equal(nextKeepAliveMs(advertKind(base, undefined, false), 40_000), P.keepAliveMs, 'the first advert is news')
  // The adverts' lifetime covers two lost keep-alives at any interval.
  assert.ok(ADVERT_LIFETIME_KEEPALIVES * P.maxKeepAliveMs <= MAX_ADVERT_LIFETIME_MS, 'receivers grant the longest lifetime a sender asks')
  assert.equal(ADVERT_LIFETIME_KEEPALIVES, 3)
})

test('advert policy: a forced advert goes early while the sender\'s forced budget lasts, and its rate stays under what receivers accept', { timeout: 5000 }, () => {
  const early = (forcedEarly: boolean, last: AdvertFacts | undefined = base): number =>
    nextAdvertDueMs({ facts: base, last, lastPublishMs: 10_000, forced: true, forcedEarly }) - 10_000
  assert.equal(early(true), P.forcedMinIntervalMs, 'a new subscriber, budget left: soon')
  assert.equal(early(false), P.minIntervalMs, 'budget spent: the urgent bound')
  assert.ok(P.forcedMinIntervalMs < P.minIntervalMs)
  assert.equal(nextAdvertDueMs({ facts: base, last: { ...base, depth: null }, lastPublishMs: 10_000, forced: true, forcedEarly: true }), 10_000, 'attached stays at once')
  // The budget: forcedBurst at first, one more per minIntervalMs, never above forcedBurst.
  let b = forcedBudgetAt(undefined, 0)
  assert.equal(b.tokens, P.forcedBurst)
  b = { tokens: 0, atMs: 0 }
  assert.equal(forcedBudgetAt(b, P.minIntervalMs / 2).tokens, 0.5)
  assert.equal(forcedBudgetAt(b, P.minIntervalMs * 100).tokens, P.forcedBurst)
  // A join storm at its worst: a forced advert whenever one may go, for 10 s. Receivers take 2 per minIntervalMs
  // from one author after a burst of 20 (adverts.ts, advert-budget.ts); forced and urgent adverts together stay within it.
  let budget = forcedBudgetAt(undefined, 0)
  let last = -Infinity
  let sent = 0
  for (let t = 0; t < 10_000; t++) {
    budget = forcedBudgetAt(budget, t)
    const due = nextAdvertDueMs({ facts: base, last: base, lastPublishMs: last, forced: true, forcedEarly: budget.tokens >= 1 })
    if (due > t) continue
    if (t < last + P.minIntervalMs) budget = forcedBudgetTake(budget, t)
    last = t
    sent++
  }
  assert.ok(sent <= 2 * 10_000 / P.minIntervalMs + P.forcedBurst, `${sent} forced adverts in 10 s`)
  assert.ok(P.forcedBurst < ADVERT_BURST)
  assert.ok(sent > 10_000 / P.minIntervalMs, 'more than the urgent bound alone')
})
