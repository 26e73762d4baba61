// A candidate's advert lifetime (src/p2p/components.ts): a quiet peer's long-lived advert keeps it a candidate
// while it is connected; once it hangs up (the service's peer:disconnect handler calls dropLifetime) the advert
// counts only for the receiver's own timeout from its receipt.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { dropLifetime, isFreshEntry, type CandidateEntry } from '../../src/p2p/components.js'
import { DEFAULT_TOPOLOGY_PARAMS, MAX_ADVERT_LIFETIME_MS } from '../../src/topology/index.js'
import type { AdvertBody } from '../../src/p2p/advert.js'

const params = { ...DEFAULT_TOPOLOGY_PARAMS, advertTimeoutMs: 15_000 }

function entry (lifetimeMs?: number): CandidateEntry {
  const advert = { imageId: 'img', seq: 1, depth: 0, ...(lifetimeMs !== undefined ? { lifetimeMs } : {}) } as unknown as AdvertBody
  return { advert, receivedAtMs: 1_000 }
}

test('candidate lifetime: a long-lived advert stays fresh until it ends; a hang-up cuts it to our own timeout', { timeout: 5000 }, () => {
  const quiet = entry(180_000)
  assert.equal(isFreshEntry(quiet, 1_000 + 179_000, params), true, 'within the lifetime the sender gave')
  assert.equal(isFreshEntry(quiet, 1_000 + 181_000, params), false, 'past it')
  const advert = quiet.advert
  dropLifetime(quiet)
  assert.equal(isFreshEntry(quiet, 1_000 + 14_000, params), true, 'our own timeout still holds')
  assert.equal(isFreshEntry(quiet, 1_000 + 16_000, params), false, 'after a hang-up the long lifetime no longer counts')
  assert.equal(advert.lifetimeMs, 180_000, 'the received advert object is not changed in place')
  // Without a lifetime, and with one beyond the bound.
  assert.equal(isFreshEntry(entry(), 1_000 + 16_000, params), false)
  assert.equal(isFreshEntry(entry(10 * MAX_ADVERT_LIFETIME_MS), 1_000 + MAX_ADVERT_LIFETIME_MS + 1, params), false)
  const plain = entry()
  dropLifetime(plain)
  assert.equal(plain.advert.lifetimeMs, undefined)
})
