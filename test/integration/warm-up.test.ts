// The daemon's warm-up (src/daemon/warm-up.ts), which the packaged code cache is made from: it runs a real
// restart with an image in this process, calls ready once while the agent is up, and leaves nothing behind.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { readdir } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { warmUp } from '../../src/daemon/warm-up.js'

const warmDirs = async (): Promise<string[]> => (await readdir(tmpdir())).filter(name => name.startsWith('vmthunderd-warm-'))

test('warm-up: one restart with its image, ready called once while up, its temp dir removed', { timeout: 60_000 }, async () => {
  const before = new Set(await warmDirs())
  let readyCalls = 0
  await warmUp({ signal: AbortSignal.timeout(50_000), ready: () => { readyCalls++ } })
  assert.equal(readyCalls, 1)
  assert.deepEqual((await warmDirs()).filter(name => !before.has(name)), [])
  assert.equal(process.listenerCount('SIGTERM'), 0, 'the runs removed their signal listeners')
})

test('warm-up: aborted while the agent is up, it stops it, rejects with the reason and cleans up', { timeout: 60_000 }, async () => {
  const before = new Set(await warmDirs())
  const controller = new AbortController()
  await assert.rejects(warmUp({ signal: controller.signal, ready: () => { controller.abort(new Error('stop now')) } }), /stop now/)
  assert.deepEqual((await warmDirs()).filter(name => !before.has(name)), [])
  await assert.rejects(warmUp({ signal: controller.signal, ready: () => {} }), /stop now/)
})
