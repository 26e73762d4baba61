// vmthunderctl status --watch against a real daemon: frames with the image's row and rates between frames.

import { test } from 'node:test'
import assert from 'node:assert/strict'
import { join } from 'node:path'
import { execa } from 'execa'
import { startDaemon, makeTempDir, removeDir, CTL_BIN } from '../helpers/daemon.js'
import { makeImage } from '../helpers/images.js'

test('status --watch draws one frame per interval with the image row', { timeout: 90_000 }, async () => {
  const imageDir = await makeTempDir()
  const daemon = await startDaemon({ dir: imageDir, allowImageDirs: [imageDir] })
  try {
    const image = join(daemon.dir, 'base.raw')
    await makeImage(image, 4 * 1024 * 1024, [[0, 1024 * 1024]])
    await daemon.call('image.register', { id: 'base', path: image })
    const { stdout } = await execa(process.execPath, [CTL_BIN, '--socket', daemon.socket, 'status', '--watch', '--count', '3', '--interval-s', '0.2'])
    const frames = stdout.split('\n\n')
    assert.equal(frames.length, 3, stdout)
    for (const frame of frames) {
      const lines = frame.split('\n')
      assert.match(lines[0], /^vmthunderd \S{6} {2}up \d+s {2}peers off {2}instances 0/)
      assert.match(lines[1], /^IMAGE\s+HELD\s+DEPTH\s+PARENTS\s+CHILDREN\s+RECV\s+SENT\s+READ\s+VMS\s+PREFETCH$/)
      assert.match(lines[2], /^base\s+\[#{16}\] 100\.0%\s+0\s+-\s+0\s/)
    }
    // Rates need two frames: the first has none, later ones do.
    assert.match(frames[0].split('\n')[2], /\s-\s+-\s+-\s+0\s/)
    assert.match(frames[1].split('\n')[2], /0 B\/s\s+0 B\/s\s+0 B\/s\s+0\s/)
  } finally {
    await daemon.stop()
    await removeDir(daemon.dir)
  }
})

test('status --watch refuses a bad --count', { timeout: 30_000 }, async () => {
  const result = await execa(process.execPath, [CTL_BIN, '--socket', '/nonexistent.sock', 'status', '--watch', '--count', '0'], { reject: false })
  assert.equal(result.exitCode, 2)
  assert.match(result.stderr, /--count a positive whole number/)
})
