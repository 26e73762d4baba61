// The advert rate bound (src/p2p/advert-budget.ts), in virtual time.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { AdvertBudgets, ADVERT_BURST } from '../../src/p2p/advert-budget.js'

// The daemon's refill: twice one advert per 250 ms.
const REFILL_PER_MS = 2 / 250

test('advert budget: a burst passes, then adverts are rejected and counted', { timeout: 5000 }, () => {
  const b = new AdvertBudgets(REFILL_PER_MS)
  for (let i = 0; i < ADVERT_BURST; i++) assert.equal(b.take('t a', 0), 0)
  assert.equal(b.take('t a', 0), 1)
  assert.equal(b.take('t a', 0), 2)
  assert.equal(b.take('t b', 0), 0, 'another author has its own budget')
})

test('advert budget: a flood read slowly (a token between every few messages) still counts to the burst', { timeout: 5000 }, () => {
  // A flood at 400/s that a loaded receiver reads at 37 a second: a token refills about every 4.6th message.
  // Counting rejections only since the last token let through never reached ADVERT_BURST (a CI failure).
  const b = new AdvertBudgets(REFILL_PER_MS)
  let t = 0
  let most = 0
  let passed = 0
  for (let i = 0; i < 150; i++) {
    const r = b.take('t flooder', t)
    if (r === 0) passed++
    most = Math.max(most, r)
    t += 1000 / 37
  }
  assert.ok(most >= ADVERT_BURST, `rejections counted up to ${most}`)
  assert.ok(passed < ADVERT_BURST + 40, `passed ${passed}`)
})

test('advert budget: an honest burst over the bound is forgiven once the budget is full again', { timeout: 5000 }, () => {
  const b = new AdvertBudgets(REFILL_PER_MS)
  for (let i = 0; i < ADVERT_BURST + 5; i++) b.take('t a', 0)
  // Quiet long enough to refill the whole burst (20 / 0.008 per ms = 2.5 s), then one advert per 250 ms.
  let t = 2500
  for (let i = 0; i < 40; i++) { assert.equal(b.take('t a', t), 0, `advert ${i}`); t += 250 }
  // A new burst over the bound starts counting from 1 again.
  for (let i = 0; i < ADVERT_BURST; i++) b.take('t a', t)
  assert.equal(b.take('t a', t), 1)
})

test('advert budget: bounded memory, and a topic\'s budgets go with it', { timeout: 5000 }, () => {
  const b = new AdvertBudgets(REFILL_PER_MS, 8)
  for (let i = 0; i < 20; i++) b.take(`t ${i}`, 0)
  assert.ok(b.size <= 8, `size ${b.size}`)
  b.forget('t ')
  assert.equal(b.size, 0)
})
