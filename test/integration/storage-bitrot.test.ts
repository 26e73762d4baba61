// Bit rot, as an operator's bad disk would cause it: stop an agent that holds a whole image, flip one byte in
// every MiB of its cache file, restart it. Its own NBD client reads the image exactly, the bad blocks are
// counted, and a peer that then reads from it receives no corrupt block.

import { test, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { join } from 'node:path'
import { execa } from 'execa'
import { startDaemon, makeTempDir, removeDir, type TestDaemon } from '../helpers/daemon.js'
import { makeImage, sha256File } from '../helpers/images.js'
import { writeAgentConfig, flipBytes, differingBytes } from './storage-helpers.js'

const MiB = 1024 * 1024
// Data with a hole in the middle: flips land in data blocks and in zero blocks (holes written over).
const IMAGE_BYTES = 16 * MiB
let dir: string
let image: string
let imageSha: string
let origin: TestDaemon
let seed: TestDaemon | undefined
let reader: TestDaemon | undefined
let peerArgs: string[]

before(async () => {
  dir = await makeTempDir('vmt-rot')
  image = join(dir, 'image.raw')
  await makeImage(image, IMAGE_BYTES, [[0, 10 * MiB], [13 * MiB, 3 * MiB]])
  imageSha = await sha256File(image)
  const config = await writeAgentConfig(dir)
  origin = await startDaemon({ dir: join(dir, 'origin'), args: ['--listen', '/ip4/127.0.0.1/tcp/0', '--config', config] })
  await origin.call('image.register', { id: 'img', path: image })
  const status = await origin.call('node.status')
  peerArgs = ['--listen', '/ip4/127.0.0.1/tcp/0', '--bootstrap', status.listenAddrs[0], '--trust', status.peerId, '--config', config]
}, { timeout: 120_000 })

after(async () => {
  await Promise.all([origin, seed, reader].map(async d => await d?.stop()))
  await removeDir(dir)
}, { timeout: 60_000 })

test('a seed whose cache file rotted reads the image exactly after a restart, and counts the bad blocks', { timeout: 300_000 }, async () => {
  seed = await startDaemon({ dir: join(dir, 'seed'), args: peerArgs })
  await seed.call('instance.create', { name: 'vm', image: 'img' })
  await execa('nbdcopy', ['--requests=4', seed.nbdUri('img'), join(dir, 'warm.raw')], { timeout: 240_000 })
  assert.equal((await seed.call('node.status')).images.img.heldFraction, 1)
  assert.equal(await seed.stop(), 0)

  const cacheFile = join(seed.dataDir, 'images', 'img', 'cache.raw')
  const flipped = await flipBytes(cacheFile, MiB)
  assert.equal(flipped.length, IMAGE_BYTES / MiB)
  // Before the fix, the restarted seed served 65,293 wrong bytes from such a file: check the file really is bad.
  assert.ok(await differingBytes(cacheFile, image) >= flipped.length)

  seed = await startDaemon({ dir: join(dir, 'seed'), args: peerArgs })
  const out = join(dir, 'after-rot.raw')
  await execa('nbdcopy', ['--requests=4', seed.nbdUri('img'), out], { timeout: 240_000 })
  assert.equal(await differingBytes(out, image), 0, 'wrong bytes reached the NBD client')
  assert.equal(await sha256File(out), imageSha)
  const cache = (await seed.call('node.status')).images.img.cache
  // Every flipped MiB hit one block (the read or the scrub found it first; both count).
  assert.equal(cache.corruptCachedBlocks, flipped.length, JSON.stringify(cache))
  assert.match(seed.log(), /stored block failed verification/)
})

test('a peer reading from a seed with fresh rot receives no corrupt block and the whole image', { timeout: 300_000 }, async () => {
  assert.ok(seed !== undefined)
  assert.equal(await seed.stop(), 0)
  const cacheFile = join(seed.dataDir, 'images', 'img', 'cache.raw')
  const flipped = await flipBytes(cacheFile, MiB, 777)
  seed = await startDaemon({ dir: join(dir, 'seed'), args: peerArgs })
  reader = await startDaemon({ dir: join(dir, 'reader'), args: peerArgs })
  await reader.call('instance.create', { name: 'vm', image: 'img' })
  const out = join(dir, 'reader.raw')
  await execa('nbdcopy', ['--requests=4', reader.nbdUri('img'), out], { timeout: 240_000 })
  assert.equal(await sha256File(out), imageSha)
  const readerImage = (await reader.call('node.status')).images.img
  assert.equal(readerImage.cache.corruptBlocks, 0, 'a corrupt block reached the peer')
  // Whatever the seed was asked, it either served verified bytes or said it no longer has them; its own
  // NBD client reads the image exactly.
  const seedOut = join(dir, 'seed-again.raw')
  await execa('nbdcopy', ['--requests=4', seed.nbdUri('img'), seedOut], { timeout: 240_000 })
  assert.equal(await sha256File(seedOut), imageSha)
  const seedCache = (await seed.call('node.status')).images.img.cache
  assert.equal(seedCache.corruptCachedBlocks, flipped.length, JSON.stringify(seedCache))
  const seedId = (await seed.call('node.status')).peerId
  process.stdout.write(`# reader got ${readerImage.bytesReceivedByPeer?.[seedId] ?? 0} bytes from the rotted seed\n`)
})
