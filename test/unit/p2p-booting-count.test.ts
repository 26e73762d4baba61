// The count of peers booting an image (the prefetcher's gates, node.status): made afresh at every change of the
// sources (an advert, a connection, a ban: ServiceEvents.sourcesEpoch) and at most BOOTING_COUNT_TTL_MS old
// otherwise. Reused for 100 ms alone, it once showed 0 beside a live profile fetched from a booting peer.

import { test } from 'node:test'
import assert from 'node:assert/strict'
import { BOOTING_COUNT_TTL_MS, bootingPeersCached, type ImageState } from '../../src/p2p/components.js'
import { createServiceEvents } from '../../src/p2p/events.js'

test('booting peers: counted again once an advert or connection moved the sources epoch, or the TTL passed; else reused', () => {
  const events = createServiceEvents()
  const state: Pick<ImageState, 'bootingCount'> = {}
  let booting = 0
  let counts = 0
  const count = (): number => { counts++; return booting }
  const at = (nowMs: number): number => bootingPeersCached(state, nowMs, events.sourcesEpoch(), count)

  assert.equal(at(1_000), 0)
  assert.equal(at(1_050), 0)
  assert.equal(counts, 1, 'reused within the TTL while nothing changed')
  // A booting peer's advert arrives: the adverts' handler calls sourcesChanged.
  booting = 1
  events.sourcesChanged('ab'.repeat(32))
  assert.equal(at(1_051), 1, 'the advert counts at once, not after the TTL')
  assert.equal(counts, 2)
  // Its adverts go stale with no event: the TTL bounds how long it still counts.
  booting = 0
  assert.equal(at(1_051 + BOOTING_COUNT_TTL_MS - 1), 1)
  assert.equal(at(1_051 + BOOTING_COUNT_TTL_MS), 0)
  // A connection closing (sourcesChanged for every image) counts again too; a clock going back does not reuse.
  booting = 2
  events.sourcesChanged()
  assert.equal(at(1_200), 2)
  booting = 3
  assert.equal(at(1_100), 3)
  assert.equal(counts, 5)
})
