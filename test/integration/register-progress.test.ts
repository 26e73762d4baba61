// image.register of a large image through a real daemon: image.register.status reports the hashing and the
// copy moving (several values strictly between 0 and the size), and `vmthunderctl image register` off a
// terminal prints progress lines with a bar, bytes of the total, and an ETA, on stderr, then the result.

import { test } from 'node:test'
import assert from 'node:assert/strict'
import { open } from 'node:fs/promises'
import { randomFillSync } from 'node:crypto'
import { join } from 'node:path'
import { execa } from 'execa'
import { startDaemon, makeTempDir, removeDir, CTL_BIN, type TestDaemon } from '../helpers/daemon.js'
import { waitFor } from '../helpers/wait.js'
import type { ImageRegisterStatus, RegistrationProgress } from '../../src/rpc/types.js'

const MiB = 1024 * 1024
const IMAGE_BYTES = 256 * MiB

/** A non-sparse file of random bytes: every block is read and hashed, none is a hole. */
async function writeRandomImage (path: string, sizeBytes: number): Promise<void> {
  const handle = await open(path, 'w')
  try {
    const chunk = Buffer.alloc(8 * MiB)
    for (let at = 0; at < sizeBytes; at += chunk.length) await handle.write(randomFillSync(chunk), 0, Math.min(chunk.length, sizeBytes - at), at)
  } finally {
    await handle.close()
  }
}

async function withDaemon (fn: (daemon: TestDaemon, image: string) => Promise<void>): Promise<void> {
  const dir = await makeTempDir('vmt-register')
  const daemon = await startDaemon({ dir, allowImageDirs: [dir] })
  try {
    const image = join(dir, 'big.raw')
    await writeRandomImage(image, IMAGE_BYTES)
    await fn(daemon, image)
  } finally {
    await daemon.stop()
    await removeDir(dir)
  }
}

test('image.register.status reports bytes hashed, then copied, of the total while image.register runs', { timeout: 180_000 }, async () => {
  await withDaemon(async (daemon, image) => {
    let finished = false
    const register = daemon.call('image.register', { id: 'big', path: image }).finally(() => { finished = true })
    const seen: RegistrationProgress[] = []
    await waitFor('the registration to finish', async () => {
      const status: ImageRegisterStatus = await daemon.call('image.register.status', { id: 'big' })
      if (status !== null) seen.push(status)
      return finished ? true : undefined
    }, { timeoutMs: 150_000, minIntervalMs: 2, maxIntervalMs: 5 })
    const summary = await register
    assert.equal(summary.sizeBytes, IMAGE_BYTES)
    assert.equal(summary.seed, true)
    for (const s of seen) assert.equal(s.totalBytes, IMAGE_BYTES)
    const between = (phase: string): Set<number> => new Set(seen.filter(s => s.phase === phase && s.doneBytes > 0 && s.doneBytes < IMAGE_BYTES).map(s => s.doneBytes))
    assert.ok(between('hashing').size >= 2, `hashing values seen: ${[...between('hashing')].join(', ')}`)
    assert.ok(seen.some(s => s.phase === 'copying'), 'the copy into the cache is reported too')
    // Progress only moves forward: hashing before copying, bytes never back.
    const read = seen.map(s => (s.phase === 'hashing' ? 0 : IMAGE_BYTES) + s.doneBytes)
    for (let i = 1; i < read.length; i++) assert.ok(read[i] >= read[i - 1], `progress went back at ${i}: ${read[i - 1]} -> ${read[i]}`)
    assert.equal(await daemon.call('image.register.status', { id: 'big' }), null, 'no registration under way once it answered')
  })
})

test('vmthunderctl image register off a terminal prints progress lines on stderr, the result on stdout', { timeout: 180_000 }, async () => {
  await withDaemon(async (daemon, image) => {
    const result = await execa(process.execPath, [CTL_BIN, '--socket', daemon.socket, 'image', 'register', 'big', image, '--interval-s', '0.1'], { timeout: 150_000 })
    assert.match(result.stdout, /^registered big: 256 MiB, 4096 blocks of 64\.0 KiB\nroot [0-9a-f]{64}\nnbd {2}nbd\+unix:/)
    const lines = result.stderr.split('\n').filter(l => l !== '')
    assert.ok(lines.length >= 2, result.stderr)
    for (const line of lines) {
      assert.match(line, /^registering big [12]\/2 (hashing|copying) \[[#.]{24}\] +\d+\.\d% {2}\S+ \S+ of 256 MiB {2}(-|\S+ \S+\/s) {2}eta (\?|\d+[smh])$/, line)
    }
    // Off a terminal no line is redrawn: no carriage returns or escapes.
    assert.doesNotMatch(result.stderr, /[\r\x1b]/)
  })
})
