# saltpeter.daemon: the saltpeter daemon on the Salt master, as a hardened systemd service.
# Apply to the master only:  salt-call state.apply saltpeter.daemon   (on the master)
# Put the binary at files/saltpeter first (see files/README.md).
#
# The daemon runs as root: it publishes through the master's request server with the master's
# key (<cachedir>/.<user>_key, readable by root and the master's user only) and reads its event
# bus and job cache. The unit keeps the file system read-only but for its state and logs.
{%- from tpldir ~ "/map.jinja" import saltpeter with context %}
{%- set daemon = saltpeter.daemon %}
{%- set unit = '/etc/systemd/system/' ~ daemon.service ~ '.service' %}

saltpeter-daemon:
  file.managed:
    - name: {{ daemon.path }}
    - source: {{ daemon.source }}
    - user: root
    - group: root
    - mode: '0755'
    - makedirs: True

saltpeter-daemon-unit:
  file.managed:
    - name: {{ unit }}
    - source: {{ daemon.unit_source }}
    - user: root
    - group: root
    - mode: '0644'

{%- if daemon.read_write_paths %}

# More writable paths, for a database or logdir outside /var/lib/saltpeter, /var/log/saltpeter.
saltpeter-daemon-unit-paths:
  file.managed:
    - name: /etc/systemd/system/{{ daemon.service }}.service.d/paths.conf
    - makedirs: True
    - mode: '0644'
    - contents: |
        [Service]
        ReadWritePaths={{ daemon.read_write_paths | join(' ') }}
    - onchanges_in:
      - cmd: saltpeter-daemon-reload
    - watch_in:
      - service: saltpeter-daemon-service
{%- endif %}

saltpeter-daemon-reload:
  cmd.run:
    - name: systemctl daemon-reload
    - onchanges:
      - file: saltpeter-daemon-unit

saltpeter-daemon-configdir:
  file.directory:
    - name: {{ daemon.configdir }}
    - user: root
    - group: root
    - mode: '0750'

# A starter config (pillar saltpeter:config); jobs go into other *.yaml files beside it.
saltpeter-daemon-config:
  file.serialize:
    - name: {{ daemon.configdir }}/00-saltpeter.yaml
    - serializer: yaml
    - dataset:
        saltpeter_config: {{ saltpeter.config | json }}
    - user: root
    - group: root
    - mode: '0640'
    - require:
      - file: saltpeter-daemon-configdir

saltpeter-daemon-service:
  service.running:
    - name: {{ daemon.service }}
    - enable: True
    - require:
      - cmd: saltpeter-daemon-reload
    - watch:
      - file: saltpeter-daemon
      - file: saltpeter-daemon-unit
      - file: saltpeter-daemon-config
