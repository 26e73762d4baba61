// Full and read-only disks, for real: an agent whose data dir is a small tmpfs that fills with the blocks of a
// read of the whole image, and an agent started on a read-only data dir.

import { test, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { join } from 'node:path'
import { mkdir, statfs, rm } from 'node:fs/promises'
import { execa } from 'execa'
import { startDaemon, makeTempDir, removeDir, AGENT_NODE_FLAGS, DAEMON_BIN, type TestDaemon } from '../helpers/daemon.js'
import { makeImage, sha256File } from '../helpers/images.js'
import { writeAgentConfig } from './storage-helpers.js'
import { waitFor } from '../helpers/wait.js'
import { verifyDataDir, dataDirProblems } from '../../scripts/lib/verify-data-dir.js'

const MiB = 1024 * 1024
const IMAGE_BYTES = 48 * MiB
let dir: string
let image: string
let imageSha: string
let config: string
let origin: TestDaemon
let agent: TestDaemon | undefined
const mounts: string[] = []

async function mountTmpfs (at: string, options: string): Promise<void> {
  await mkdir(at, { recursive: true })
  await execa('mount', ['-t', 'tmpfs', '-o', options, 'tmpfs', at])
  mounts.push(at)
}

before(async () => {
  dir = await makeTempDir('vmt-full')
  image = join(dir, 'image.raw')
  await makeImage(image, IMAGE_BYTES, [[0, IMAGE_BYTES]])
  imageSha = await sha256File(image)
  config = await writeAgentConfig(dir)
}, { timeout: 60_000 })

after(async () => {
  await Promise.all([origin, agent].map(async d => await d?.stop()))
  for (const at of mounts.reverse()) await execa('umount', [at], { reject: false })
  await removeDir(dir)
}, { timeout: 60_000 })

test('a cache disk that fills as an image is read: the read completes exactly, nothing wrong is kept, and the agent recovers when space frees', { timeout: 300_000 }, async () => {
  origin = await startDaemon({ dir: join(dir, 'origin'), args: ['--listen', '/ip4/127.0.0.1/tcp/0', '--config', config] })
  await origin.call('image.register', { id: 'img', path: image })
  const status = await origin.call('node.status')
  const small = join(dir, 'small')
  // Room for the image once the ballast below is gone.
  await mountTmpfs(small, 'size=64m')
  agent = await startDaemon({ dir: small, args: ['--listen', '/ip4/127.0.0.1/tcp/0', '--bootstrap', status.listenAddrs[0], '--trust', status.peerId, '--config', config] })
  await agent.call('instance.create', { name: 'vm', image: 'img' })
  // Leave about 4 MiB: the disk fills a few MiB into the read.
  const fs = await statfs(small)
  const ballast = join(small, 'ballast')
  await execa('fallocate', ['-l', String(fs.bavail * fs.bsize - 4 * MiB), ballast])

  const full = join(dir, 'full.raw')
  await execa('nbdcopy', ['--requests=4', agent.nbdUri('img'), full], { timeout: 240_000 })
  assert.equal(await sha256File(full), imageSha, 'a read during a full disk returned wrong data')
  // The read's blocks are written once its reads pause (cache.ts: COMMIT_QUIET_MS), 10 s after at most: the
  // disk fills then, and what did not fit is dropped from the present set.
  const during = await waitFor('the cache disk to fill', async () => {
    const img = (await agent?.call('node.status'))?.images.img
    return img?.cache.writeFailedBlocks > 0 ? img : undefined
  }, { timeoutMs: 60_000 })
  assert.ok(during.heldFraction < 1)
  assert.match(agent.log(), /cache write failed.*ENOSPC/)

  // Space comes back: the same agent, without a restart, keeps what it reads from now on.
  await rm(ballast)
  const again = join(dir, 'again.raw')
  await execa('nbdcopy', ['--requests=4', agent.nbdUri('img'), again], { timeout: 240_000 })
  assert.equal(await sha256File(again), imageSha)
  assert.equal((await agent.call('node.status')).images.img.heldFraction, 1)
  assert.equal(await agent.stop(), 0)
  const report = await verifyDataDir(agent.dataDir)
  assert.deepEqual(dataDirProblems(report), [])
  assert.equal(report.presentBlocks, report.blockCount, 'after space came back every block was kept')
  assert.equal(report.instances, 1)
})

test('a read-only data dir at start: exit code 1 and a message naming the dir and the reason', { timeout: 60_000 }, async () => {
  const ro = join(dir, 'ro')
  await mountTmpfs(ro, 'ro,size=1m')
  const run = await execa(process.execPath, [...AGENT_NODE_FLAGS, DAEMON_BIN, '--data-dir', ro, '--socket', join(dir, 'ro.sock'), '--nbd-socket', join(dir, 'ro-nbd.sock'), '--no-p2p'], { reject: false, timeout: 30_000 })
  assert.equal(run.exitCode, 1, run.stderr)
  assert.match(run.stderr, new RegExp(`data dir ${ro} is not writable: the file system is read-only \\(EROFS\\)`))
})
