// instance.create of an image whose manifest can never be had fails (it used to wait for ever) with the code
// that says why: 1040 when the origin's key is not trusted here, 1041 when no peer can be reached (wrong PSK).
// Real daemons on loopback; the deadline is the config's p2p.manifestTimeoutMs.

import { test, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { join } from 'node:path'
import { mkdir, readdir, rm, writeFile } from 'node:fs/promises'
import { startDaemon, makeTempDir, removeDir, type TestDaemon } from '../helpers/daemon.js'
import { makeImage } from '../helpers/images.js'
import { generatePsk } from '../../src/p2p/psk.js'

let dir: string
let origin: TestDaemon
const agents: TestDaemon[] = []
let bootstrap: string
let originKey: string
let config: string

before(async () => {
  dir = await makeTempDir('vmtman')
  await makeImage(join(dir, 'img.raw'), 4 * 1024 * 1024, [[0, 1024 * 1024]])
  await writeFile(join(dir, 'net.key'), generatePsk(), { mode: 0o600 })
  await writeFile(join(dir, 'other.key'), generatePsk(), { mode: 0o600 })
  config = join(dir, 'agent.json')
  await writeFile(config, JSON.stringify({ prefetch: { enabled: false }, p2p: { heartbeatMs: 300, manifestTimeoutMs: 10_000 } }))
  origin = await startDaemon({ dir: join(dir, 'origin'), args: ['--listen', '/ip4/127.0.0.1/tcp/0', '--psk', join(dir, 'net.key'), '--config', config], allowImageDirs: [dir] })
  await origin.call('image.register', { id: 'img', path: join(dir, 'img.raw') })
  const status = await origin.call('node.status')
  bootstrap = status.listenAddrs[0]
  originKey = status.publicKey
})

after(async () => {
  for (const d of [...agents, origin]) await d?.stop()
  await removeDir(dir)
})

test('an agent that does not trust the origin\'s key gets 1040 naming --trust', { timeout: 90_000 }, async () => {
  const agent = await startDaemon({ dir: join(dir, 'untrusting'), args: ['--listen', '/ip4/127.0.0.1/tcp/0', '--bootstrap', bootstrap, '--psk', join(dir, 'net.key'), '--config', config] })
  agents.push(agent)
  await assert.rejects(agent.call('instance.create', { name: 'vm1', image: 'img' }), (e: any) => {
    assert.equal(e.code, 1040, e.message)
    assert.match(e.message, /--trust/)
    assert.ok(e.message.includes(originKey), e.message)
    return true
  })
  assert.deepEqual(await agent.call('instance.list'), [])
  // The same agent, told to trust the origin, gets the image: the refusal was about trust only.
  const trusting = await startDaemon({ dir: join(dir, 'trusting'), args: ['--listen', '/ip4/127.0.0.1/tcp/0', '--bootstrap', bootstrap, '--psk', join(dir, 'net.key'), '--trust', originKey, '--config', config] })
  agents.push(trusting)
  const created = await trusting.call('instance.create', { name: 'vm1', image: 'img' })
  assert.equal(created.image, 'img')
})

test('an agent with the wrong PSK gets 1041 saying no peer is connected', { timeout: 90_000 }, async () => {
  const agent = await startDaemon({ dir: join(dir, 'wrongpsk'), args: ['--listen', '/ip4/127.0.0.1/tcp/0', '--bootstrap', bootstrap, '--psk', join(dir, 'other.key'), '--trust', originKey, '--config', config] })
  agents.push(agent)
  await assert.rejects(agent.call('instance.create', { name: 'vm1', image: 'img' }), (e: any) => {
    assert.equal(e.code, 1041, e.message)
    assert.match(e.message, /no peer is connected/)
    assert.match(e.message, /--psk/)
    return true
  })
  // The daemon is still serving after the failed create.
  assert.equal((await agent.call('node.status')).instances, 0)
})

// instance.create of a new image writes the VM's overlay while the image is installed (methods.ts): when the
// install fails, no instance and no overlay may be left behind, and the same create succeeds once it can.
test('an image this host cannot install leaves no instance and no overlay; the create succeeds afterwards', { timeout: 90_000 }, async () => {
  const agentDir = join(dir, 'noinstall')
  const agent = await startDaemon({ dir: agentDir, args: ['--listen', '/ip4/127.0.0.1/tcp/0', '--bootstrap', bootstrap, '--psk', join(dir, 'net.key'), '--trust', originKey, '--config', config] })
  agents.push(agent)
  // A file where the images directory should be: the image's directory cannot be made (ENOTDIR).
  const imagesDir = join(agentDir, 'data', 'images')
  await rm(imagesDir, { recursive: true, force: true })
  await writeFile(imagesDir, 'not a directory')
  await assert.rejects(agent.call('instance.create', { name: 'vm1', image: 'img' }), (e: any) => {
    assert.match(e.message, /ENOTDIR|not a directory/i, e.message)
    return true
  })
  assert.deepEqual(await agent.call('instance.list'), [])
  assert.deepEqual((await readdir(join(agentDir, 'data', 'instances'))).filter(f => f.endsWith('.qcow2')), [])
  await rm(imagesDir)
  await mkdir(imagesDir)
  const created = await agent.call('instance.create', { name: 'vm1', image: 'img' })
  assert.equal(created.image, 'img')
  assert.deepEqual((await agent.call('instance.list')).map((i: { name: string }) => i.name), ['vm1'])
})
