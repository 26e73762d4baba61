// The agent's V8 flags (bin/v8-flags.js) take effect when set at run time on this node: a function compiled
// after `started` runs Sparkplug code from its first calls, and VMTHUNDER_V8_FLAGS='' leaves V8's defaults.
// Checked in a child node (flags are process-wide), with V8's own test intrinsic.

import { test } from 'node:test'
import assert from 'node:assert/strict'
import { execFileSync } from 'node:child_process'
import { fileURLToPath } from 'node:url'

const FLAGS_MODULE = fileURLToPath(new URL('../../bin/v8-flags.js', import.meta.url))

/** Runs the hooks in a fresh node (env given), then reports whether a new function is on Sparkplug after two calls. */
function sparkplugAfterHooks (env: Record<string, string>): string {
  const script = [
    `const { agentV8Hooks } = await import(${JSON.stringify(FLAGS_MODULE)})`,
    'const hooks = agentV8Hooks()',
    'hooks.loaded(); hooks.started()',
    "const f = new Function('x', 'return x + 1')",
    'f(1); f(2)',
    "console.log(String(eval('%ActiveTierIsSparkplug(f)')))"
  ].join('\n')
  const childEnv: Record<string, string | undefined> = { ...process.env, ...env }
  if (env.VMTHUNDER_V8_FLAGS === undefined) delete childEnv.VMTHUNDER_V8_FLAGS
  return execFileSync(process.execPath, ['--allow-natives-syntax', '--input-type=module', '-e', script], { env: childEnv, timeout: 20_000 }).toString().trim()
}

test('the agent flags turn Sparkplug on for code compiled once started; VMTHUNDER_V8_FLAGS empty keeps V8 defaults', { timeout: 60_000 }, () => {
  assert.equal(sparkplugAfterHooks({}), 'true')
  assert.equal(sparkplugAfterHooks({ VMTHUNDER_V8_FLAGS: '' }), 'false')
})

test('bin/vmthunderd.js runs node with AGENT_NODE_FLAGS (its first line), and this node takes them', { timeout: 30_000 }, async () => {
  const { readFile } = await import('node:fs/promises')
  const { AGENT_NODE_FLAGS } = await import(FLAGS_MODULE)
  const first = (await readFile(fileURLToPath(new URL('../../bin/vmthunderd.js', import.meta.url)), 'utf8')).split('\n')[0]
  const m = /^#!\/usr\/bin\/env -S node((?: \S+)*)$/.exec(first)
  assert.ok(m !== null, first)
  assert.deepEqual(m[1].split(' ').filter(f => f !== ''), AGENT_NODE_FLAGS)
  assert.ok(AGENT_NODE_FLAGS.length > 0)
  // A flag this node does not know would stop the daemon before it ran a line.
  assert.equal(execFileSync(process.execPath, [...AGENT_NODE_FLAGS, '-e', 'process.stdout.write("ok")'], { timeout: 20_000 }).toString(), 'ok')
})
