// An operator takes an origin's key out of p2p.trust and restarts an agent that adopted an image from that
// origin. The agent must not serve the image any more: unused, it is deleted (fetched again if the key comes
// back); used by an instance, the agent refuses to start (exit code 2, naming the instance and the key) and
// loses nothing. Before, the agent loaded and served such an image as if it still trusted its origin.

import { test, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { join } from 'node:path'
import { access } from 'node:fs/promises'
import { execa } from 'execa'
import { startDaemon, makeTempDir, removeDir, AGENT_NODE_FLAGS, DAEMON_BIN, type TestDaemon } from '../helpers/daemon.js'
import { makeImage } from '../helpers/images.js'
import { writeAgentConfig } from './storage-helpers.js'

const MiB = 1024 * 1024
let dir: string
let origin: TestDaemon
let agent: TestDaemon | undefined
let common: string[]
let trust: string[]
let originKeyHex: string

before(async () => {
  dir = await makeTempDir('vmt-untrust')
  const image = join(dir, 'image.raw')
  await makeImage(image, 4 * MiB, [[0, 4 * MiB]])
  const config = await writeAgentConfig(dir)
  origin = await startDaemon({ dir: join(dir, 'origin'), args: ['--listen', '/ip4/127.0.0.1/tcp/0', '--config', config], allowImageDirs: [dir] })
  await origin.call('image.register', { id: 'img', path: image })
  const status = await origin.call('node.status')
  originKeyHex = status.publicKey
  common = ['--listen', '/ip4/127.0.0.1/tcp/0', '--bootstrap', status.listenAddrs[0], '--config', config]
  trust = ['--trust', status.peerId]
}, { timeout: 120_000 })

after(async () => {
  await Promise.all([origin, agent].map(async d => await d?.stop()))
  await removeDir(dir)
}, { timeout: 60_000 })

/** Runs the agent's daemon in its directory until it exits (it is expected not to start). */
async function runToExit (args: string[]): Promise<{ exitCode?: number, stderr: string }> {
  const agentDir = join(dir, 'agent')
  const r = await execa(process.execPath, [...AGENT_NODE_FLAGS, DAEMON_BIN, '--data-dir', join(agentDir, 'data'), '--socket', join(agentDir, 'ctl.sock'), ...args],
    { reject: false, timeout: 60_000 })
  return { exitCode: r.exitCode, stderr: r.stderr }
}

test('an adopted image whose origin is no longer trusted: in use, the agent refuses to start; unused, it is dropped', { timeout: 240_000 }, async () => {
  agent = await startDaemon({ dir: join(dir, 'agent'), args: [...common, ...trust] })
  await agent.call('instance.create', { name: 'vm', image: 'img' })
  const imageDir = join(agent.dataDir, 'images', 'img')
  await access(join(imageDir, 'manifest'))
  assert.equal(await agent.stop(), 0)
  agent = undefined

  // In use: no start, a clear reason, nothing deleted.
  const refused = await runToExit(common)
  assert.equal(refused.exitCode, 2, refused.stderr)
  assert.match(refused.stderr, /image 'img' is signed by origin key/)
  assert.ok(refused.stderr.includes(originKeyHex), refused.stderr)
  assert.match(refused.stderr, /instance\(s\) vm/)
  await access(join(imageDir, 'manifest'))

  // Trusted again, it is served as before; destroy the instance.
  agent = await startDaemon({ dir: join(dir, 'agent'), args: [...common, ...trust] })
  assert.deepEqual((await agent.call('image.list')).map((i: { id: string }) => i.id), ['img'])
  await agent.call('instance.destroy', { name: 'vm' })
  assert.equal(await agent.stop(), 0)

  // Unused and untrusted: the agent starts without it, and its files are gone.
  agent = await startDaemon({ dir: join(dir, 'agent'), args: common })
  assert.deepEqual(await agent.call('image.list'), [])
  await assert.rejects(access(imageDir), { code: 'ENOENT' })
  assert.match(agent.log(), /dropping an image whose origin is not trusted any more/)
  await assert.rejects(execa('nbdinfo', ['--size', agent.nbdUri('img')], { timeout: 30_000 }))
})
