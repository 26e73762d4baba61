// Learning the boot order on a real daemon: part of the Debian 12 boot trace is replayed through the NBD export
// after instance.create, the recording ends after its quiet time, and `vmthunderctl image profile export`
// gives the blocks in the order the reads first touched them. Then the profile goes out and back in through
// the CLI (import merges: the same boot twice keeps the order, counts two boots), and bad files are refused.

import { test, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { join } from 'node:path'
import { readFile, writeFile } from 'node:fs/promises'
import { startDaemon, makeTempDir, removeDir, type TestDaemon } from '../helpers/daemon.js'
import { makeTraceImage } from '../../scripts/lib/trace-image.js'
import { nbdConnect, type TraceRead } from '../../scripts/lib/nbd-replay.js'
import { withQuiet, writeConfig, MiB, ctl, firstTouchOrder, imageStatus, traceReads, waitUntil } from './prefetch-helpers.js'

const IMAGE_BYTES = 1024 * MiB
const BLOCK = 64 * 1024
const REPLAYED_READS = 400
let dir: string
let daemon: TestDaemon
let reads: TraceRead[]

before(async () => {
  dir = await makeTempDir('vmt-pf-profile')
  reads = (await traceReads()).slice(0, REPLAYED_READS)
  const image = join(dir, 'debian.raw')
  await makeTraceImage(image, reads, IMAGE_BYTES, 0)
  daemon = await startDaemon({ dir, args: ['--no-p2p', '--config', await writeConfig(dir, 'daemon', withQuiet({}))], allowImageDirs: [dir] })
  await daemon.call('image.register', { id: 'deb', path: image })
}, { timeout: 120_000 })

after(async () => {
  await daemon?.stop()
  await removeDir(dir)
}, { timeout: 60_000 })

test('a boot replayed through the NBD export is recorded in first-touch order and exported by the CLI', { timeout: 120_000 }, async () => {
  const none = await ctl(daemon, ['image', 'profile', 'export', 'deb', join(dir, 'none.json')])
  assert.equal(none.exitCode, 1, 'no profile before a boot')
  assert.match(none.stderr, /no boot profile yet/)

  await daemon.call('instance.create', { name: 'vm1', image: 'deb' })
  // A connection that is not the instance's VM reads first: it takes the instance's place only if it reads.
  const conn = await nbdConnect({ socketPath: daemon.nbdSocket, exportName: 'deb' })
  for (const r of reads) await conn.read(r.offset, r.length)
  await conn.close()

  const status = await waitUntil('the recording to end', async () => {
    const s = await imageStatus(daemon, 'deb')
    return s.prefetch.profileEntries > 0 ? s : undefined
  }, 30_000)
  assert.equal(status.prefetch.profileBoots, 1)
  assert.equal(status.prefetch.readsLocal + status.prefetch.readsFetched, REPLAYED_READS)

  const file = join(dir, 'profile.json')
  const exported = await ctl(daemon, ['image', 'profile', 'export', 'deb', file])
  assert.equal(exported.exitCode, 0, exported.stderr)
  const profile = JSON.parse(await readFile(file, 'utf8'))
  assert.equal(profile.format, 'vmthunder-profile')
  assert.equal(profile.blockSizeBytes, BLOCK)
  assert.equal(profile.boots, 1)
  const blocks = profile.entries.map((e: number[]) => e[0])
  assert.deepEqual(blocks, firstTouchOrder(reads, BLOCK), 'profile order = first-touch order of the replayed reads')
  // Times are relative to instance.create and never go back.
  for (let i = 1; i < profile.entries.length; i++) assert.ok(profile.entries[i][1] >= profile.entries[i - 1][1])
  for (const e of profile.entries) assert.equal(e[2], 1)
})

test('profile import/export round trip through the CLI; bad profiles are refused', { timeout: 60_000 }, async () => {
  const file = join(dir, 'profile.json')
  const before = JSON.parse(await readFile(file, 'utf8'))
  const imported = await ctl(daemon, ['--json', 'image', 'profile', 'import', 'deb', file])
  assert.equal(imported.exitCode, 0, imported.stderr)
  const result = JSON.parse(imported.stdout)
  assert.equal(result.boots, 2)
  assert.equal(result.entries, before.entries.length)

  const again = join(dir, 'again.json')
  assert.equal((await ctl(daemon, ['image', 'profile', 'export', 'deb', again])).exitCode, 0)
  const after = JSON.parse(await readFile(again, 'utf8'))
  assert.equal(after.boots, 2)
  assert.deepEqual(after.entries.map((e: number[]) => e[0]), before.entries.map((e: number[]) => e[0]), 'the same boot twice keeps the order')
  assert.equal(after.version, result.version)

  // Another image's profile (other root), and garbage: refused with the error named, nothing changed.
  const foreign = join(dir, 'foreign.json')
  await writeFile(foreign, JSON.stringify({ ...before, rootHex: 'ab'.repeat(32) }))
  const refused = await ctl(daemon, ['--json', 'image', 'profile', 'import', 'deb', foreign])
  assert.equal(refused.exitCode, 1)
  assert.equal(JSON.parse(refused.stdout).error.data.name, 'ProfileMismatchError')
  const garbage = join(dir, 'garbage.json')
  await writeFile(garbage, JSON.stringify({ ...before, entries: [[1e12, 0, 1]] }))
  const bad = await ctl(daemon, ['--json', 'image', 'profile', 'import', 'deb', garbage])
  assert.equal(bad.exitCode, 1)
  assert.equal(JSON.parse(bad.stdout).error.data.name, 'ProfileDecodeError')
  const status = await imageStatus(daemon, 'deb')
  assert.equal(status.prefetch.profileBoots, 2)
  assert.equal(status.prefetch.profileVersion, result.version)

  // `status` shows the prefetch column sensibly (the origin holds the image: done).
  const human = await ctl(daemon, ['status'])
  assert.equal(human.exitCode, 0)
  assert.match(human.stdout, /PREFETCH/)
})
