// Run as a child process by the crash test: fills a block cache from a file source in random order, forever
// (until killed), printing a line for each batch of blocks verified, with the blocks durable so far (commits
// lag the verification by up to the cache's commit delay). Usage: fill-cache.ts DIR
// DIR holds manifest (signed), image.raw (the source) and gets cache.raw + meta/ (level).

import { readFile } from 'node:fs/promises'
import { join } from 'node:path'
import { Level } from 'level'
import { decodeManifest } from '../../src/blockstack/manifest.js'
import { BlockCache } from '../../src/blockstack/cache.js'
import { levelPresenceStore } from '../../src/blockstack/presence.js'
import { fileBlockSource } from '../../src/blockstack/file-source.js'

const dir = process.argv[2]
const manifest = decodeManifest(await readFile(join(dir, 'manifest')))
const db = new Level<string, any>(join(dir, 'meta'), { valueEncoding: 'json' })
const presence = levelPresenceStore(db.sublevel(`present-${manifest.rootHex}`, { valueEncoding: 'view' }) as any)
const cache = await BlockCache.open({ manifest, path: join(dir, 'cache.raw'), presence, source: fileBlockSource(join(dir, 'image.raw')), maxBlocksPerFetch: 8 })
cache.onBlocksAdded(blocks => process.stdout.write(`verified ${blocks.length} present ${cache.presentCount()} durable ${cache.durableCount()}\n`))
const order = Array.from({ length: manifest.blockCount }, (_, i) => i).filter(i => !cache.has(i))
for (let i = order.length - 1; i > 0; i--) {
  const j = Math.floor(Math.random() * (i + 1));
  [order[i], order[j]] = [order[j], order[i]]
}
process.stdout.write(`start present ${cache.presentCount()} missing ${order.length}\n`)
for (let i = 0; i < order.length; i += 16) {
  await cache.ensure(order.slice(i, i + 16), { signal: AbortSignal.timeout(60_000), priority: 'prefetch' })
  // A source with some latency, as peers are: the fill spans several group commits, so kills land mid-fill.
  await new Promise(resolve => setTimeout(resolve, 5))
}
await cache.flush()
process.stdout.write('done\n')
