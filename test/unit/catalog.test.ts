// The image catalog (src/p2p/catalog.ts) against a fake pubsub and fetch: the codec's bounds, who is trusted, what
// is fetched and held (bounded), and a create taking a manifest held or under way.
import '../../src/polyfill.js'
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { TopicValidatorResult } from '@libp2p/gossipsub'
import type { PeerId } from '@libp2p/interface'
import { CATALOG_TOPIC, CatalogDecodeError, MAX_CATALOG_ENTRIES, TAKE_WAIT_MS, createCatalog, decodeCatalog, encodeCatalog, type CatalogInit, type CatalogPubsub } from '../../src/p2p/catalog.js'
import type { Manifest } from '../../src/blockstack/manifest.js'

const ROOT_A = 'a'.repeat(64)
const ROOT_B = 'b'.repeat(64)

test('catalog codec: round trip; malformed, oversized or out-of-bounds messages are a CatalogDecodeError', () => {
  const entries = [{ id: 'debian-12', root: ROOT_A }, { id: 'x.y_z-1', root: ROOT_B }]
  assert.deepEqual(decodeCatalog(encodeCatalog(entries)), entries)
  const bad = [
    'not json',
    JSON.stringify({ v: 2, images: [] }),
    JSON.stringify({ v: 1 }),
    JSON.stringify({ v: 1, images: [{ id: '../etc', root: ROOT_A }] }),
    JSON.stringify({ v: 1, images: [{ id: 'a', root: 'A'.repeat(64) }] }),
    JSON.stringify({ v: 1, images: [null] }),
    JSON.stringify({ v: 1, images: Array.from({ length: MAX_CATALOG_ENTRIES + 1 }, (_, i) => ({ id: `i${i}`, root: ROOT_A })) }),
    'x'.repeat(25 * 1024)
  ]
  // The largest catalog there can be (the most entries, the longest ids) fits in one message; an origin with more
  // images announces its newest.
  const most = Array.from({ length: MAX_CATALOG_ENTRIES + 5 }, (_, i) => ({ id: `${i}`.padStart(64, 'x'), root: ROOT_A }))
  assert.deepEqual(decodeCatalog(encodeCatalog(most)), most.slice(5))
  for (const text of bad) assert.throws(() => decodeCatalog(Buffer.from(text)), (err: Error) => err instanceof CatalogDecodeError && err.name === 'CatalogDecodeError', text.slice(0, 40))
})

const peer = (id: string): PeerId => ({ toString: () => id }) as unknown as PeerId
const fakeManifest = (imageId: string, rootHex: string, bytes = 1000): Manifest =>
  ({ imageId, rootHex, encoded: new Uint8Array(bytes), blockHashes: new Uint8Array(0), zeroBlocks: new Uint8Array(0) }) as unknown as Manifest

function harness (options: Partial<CatalogInit> = {}) {
  const handlers: Array<(event: CustomEvent<any>) => void> = []
  const published: Uint8Array[] = []
  const pubsub: CatalogPubsub = {
    subscribe: () => {},
    unsubscribe: () => {},
    publish: async (_topic, data) => { published.push(data) },
    topicValidators: new Map(),
    addEventListener: (_type, handler) => { handlers.push(handler) },
    removeEventListener: () => {}
  }
  const fetches: Array<{ peerId: string, imageId: string, resolve: (m: Manifest) => void, reject: (e: Error) => void }> = []
  const stop = new AbortController()
  // Sleeps shorter than a create's wait end at once (the publish interval); the create's wait ends when the test says.
  const longSleeps: Array<() => void> = []
  const sleep = async (ms: number, signal?: AbortSignal): Promise<void> => {
    if (ms < TAKE_WAIT_MS) return
    await new Promise<void>((resolve, reject) => {
      longSleeps.push(resolve)
      signal?.addEventListener('abort', () => { reject(signal.reason) }, { once: true })
    })
  }
  const catalog = createCatalog({
    pubsub: () => pubsub,
    origins: new Set(['origin']),
    maxManifests: 2,
    ownImages: () => [],
    has: () => false,
    fetch: async (peerId, imageId) => await new Promise<Manifest>((resolve, reject) => { fetches.push({ peerId, imageId, resolve, reject }) }),
    clock: { nowMs: () => 0, sleep },
    signal: stop.signal,
    logger: { info: () => {}, warn: () => {} },
    ...options
  })
  catalog.start()
  /** Delivers a catalog message as gossipsub would: validated first, then to the listeners if accepted. */
  const deliver = (from: string, entries: Array<{ id: string, root: string }>): TopicValidatorResult => {
    const message = { type: 'signed', from: peer(from), topic: CATALOG_TOPIC, data: encodeCatalog(entries) }
    const result = pubsub.topicValidators.get(CATALOG_TOPIC)!(peer('relay'), message) as TopicValidatorResult
    if (result === TopicValidatorResult.Accept) for (const handler of handlers) handler(new CustomEvent('message', { detail: message }))
    return result
  }
  const settle = async (): Promise<void> => { for (let i = 0; i < 5; i++) await new Promise(resolve => setImmediate(resolve)) }
  return { catalog, deliver, fetches, published, settle, stop, longSleeps }
}

test('catalog: only a trusted origin\'s catalog is acted on; its manifests are fetched one at a time from it and held, within the bound', async () => {
  const { catalog, deliver, fetches, settle } = harness()
  assert.equal(deliver('stranger', [{ id: 'a', root: ROOT_A }]), TopicValidatorResult.Ignore)
  await settle()
  assert.equal(fetches.length, 0)
  assert.equal(deliver('origin', [{ id: 'a', root: ROOT_A }, { id: 'b', root: ROOT_A }, { id: 'c', root: ROOT_A }]), TopicValidatorResult.Accept)
  await settle()
  assert.deepEqual(fetches.map(f => [f.peerId, f.imageId]), [['origin', 'a']], 'one fetch at a time')
  // The same catalog again (gossip duplicates, republishing): nothing more is queued.
  deliver('origin', [{ id: 'a', root: ROOT_A }])
  for (const id of ['a', 'b', 'c']) {
    await settle()
    fetches.at(-1)!.resolve(fakeManifest(id, ROOT_A))
  }
  await settle()
  assert.deepEqual(fetches.map(f => f.imageId), ['a', 'b', 'c'])
  assert.deepEqual(catalog.stats(), { received: 2, ignored: 1, fetched: 3, failed: 0, held: 2, used: 0 })
  // The oldest went first: 'a' is gone, 'c' is taken (and dropped).
  assert.equal(await catalog.take('a', AbortSignal.timeout(1000)), undefined)
  assert.equal((await catalog.take('c', AbortSignal.timeout(1000)))?.imageId, 'c')
  assert.equal(await catalog.take('c', AbortSignal.timeout(1000)), undefined)
  assert.equal(catalog.stats().held, 1)
  // 'b' is still held; the origin's next catalog leaves it out (removed there): dropped, not given to a create.
  deliver('origin', [{ id: 'c', root: ROOT_A }])
  await settle()
  assert.equal(catalog.stats().held, 0)
  assert.equal(await catalog.take('b', AbortSignal.timeout(1000)), undefined)
})

test('catalog: a create waits for the fetch of its image under way; a wrong root or a failed fetch gives it nothing', async () => {
  const { catalog, deliver, fetches, settle, longSleeps } = harness()
  deliver('origin', [{ id: 'a', root: ROOT_A }])
  await settle()
  const taken = catalog.take('a', AbortSignal.timeout(5000))
  fetches[0].resolve(fakeManifest('a', ROOT_A))
  assert.equal((await taken)?.rootHex, ROOT_A)

  deliver('origin', [{ id: 'b', root: ROOT_A }])
  await settle()
  const wrong = catalog.take('b', AbortSignal.timeout(5000))
  fetches[1].resolve(fakeManifest('b', ROOT_B))
  assert.equal(await wrong, undefined)

  deliver('origin', [{ id: 'c', root: ROOT_A }])
  await settle()
  const failed = catalog.take('c', AbortSignal.timeout(5000))
  fetches[2].reject(new Error('stream reset'))
  assert.equal(await failed, undefined)
  assert.deepEqual(catalog.stats(), { received: 3, ignored: 0, fetched: 1, failed: 2, held: 0, used: 1 })

  // The caller's signal ends its wait.
  deliver('origin', [{ id: 'd', root: ROOT_A }, { id: 'e', root: ROOT_A }])
  await settle()
  const abort = new AbortController()
  const waiting = catalog.take('d', abort.signal)
  abort.abort(new Error('create timed out'))
  await assert.rejects(waiting, /create timed out/)
  // A newer root of the image under way is fetched after it, once: the old job's end does not forget the new one.
  deliver('origin', [{ id: 'd', root: ROOT_B }, { id: 'e', root: ROOT_A }])
  deliver('origin', [{ id: 'd', root: ROOT_B }, { id: 'e', root: ROOT_A }])
  // A fetch still queued behind another is not waited for; the one under way, TAKE_WAIT_MS at most.
  assert.equal(await catalog.take('e', AbortSignal.timeout(5000)), undefined)
  const slow = catalog.take('d', AbortSignal.timeout(5000))
  await settle()
  longSleeps.at(-1)!()
  assert.equal(await slow, undefined)
  fetches[3].resolve(fakeManifest('d', ROOT_A)) // the old root's fetch ends
  await settle()
  assert.deepEqual(fetches.slice(4).map(f => f.imageId), ['e'])
  fetches[4].resolve(fakeManifest('e', ROOT_A))
  await settle()
  deliver('origin', [{ id: 'd', root: ROOT_B }, { id: 'e', root: ROOT_A }])
  await settle()
  assert.deepEqual(fetches.slice(4).map(f => f.imageId), ['e', 'd'], 'the new root once, after e')
  assert.equal(catalog.stats().held, 1, 'e only: the old root of d was not kept')
  fetches[5].resolve(fakeManifest('d', ROOT_B))
  await settle()
  assert.equal((await catalog.take('d', AbortSignal.timeout(1000)))?.rootHex, ROOT_B)
})

test('catalog: an origin publishes the images it is the origin of, at a bounded rate; once empty after its last one went; an agent with none says nothing', async () => {
  let own = [{ id: 'a', root: ROOT_A }]
  const { catalog, published, settle } = harness({ ownImages: () => own })
  catalog.publishSoon()
  catalog.publishSoon() // folded into the one pending
  await settle()
  assert.equal(published.length, 1)
  assert.deepEqual(decodeCatalog(published[0]), own)
  own = []
  catalog.publishSoon()
  await settle()
  assert.equal(published.length, 2)
  assert.deepEqual(decodeCatalog(published[1]), [], 'the last image went: an empty catalog')
  catalog.publishSoon()
  await settle()
  assert.equal(published.length, 2, 'nothing more to say')
  const quiet = harness({ ownImages: () => [] })
  quiet.catalog.publishSoon()
  await quiet.settle()
  assert.equal(quiet.published.length, 0, 'never had images: never publishes')
})
