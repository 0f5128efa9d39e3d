{{/*
portcullis.validate refuses, at render time and with a message naming the value, the
combinations that would only fail later in the pod (exit status 64) or silently do the
wrong thing. values.schema.json checks types and shapes; this checks what depends on
several values. It renders nothing; every template that renders objects includes it
first (Helm renders templates in subdirectories before the top-level ones, so a single
validate.yaml would run after the templates whose `required` it should pre-empt).
*/}}
{{- define "portcullis.validate" -}}
{{- $v := .Values -}}
{{- $s := $v.secrets -}}
{{- $cp := $v.controlPlane -}}
{{- $vf := $v.verifier -}}
{{- if $v.redis.sentinels -}}
{{- if not $v.redis.sentinelMaster -}}
{{- fail "redis.sentinelMaster is required with redis.sentinels" -}}
{{- end -}}
{{- else -}}
{{- /* The binaries refuse these with a URL, which carries its own password and scheme. */ -}}
{{- if $v.redis.sentinelTls -}}
{{- fail "redis.sentinelTls is only for redis.sentinels: with a URL, use rediss:// for TLS" -}}
{{- end -}}
{{- range $setting := list "redisPassword" "redisSentinelPassword" -}}
{{- if include "portcullis.secretKey" (dict "root" $ "setting" $setting) -}}
{{- $value := ternary (printf "secrets.existingSecretKeys.%s" $setting) (printf "secrets.%s" $setting) (not (empty $s.existingSecret)) -}}
{{- fail (printf "%s is only for redis.sentinels: with a URL, put the password in the URL (redis://:password@host:6379)" $value) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- $needRedisUrl := and (not $v.redis.sentinels) (or $cp.enabled (and $vf.enabled (not $vf.jwksUrl))) -}}
{{- if $s.existingSecret -}}
{{- $keys := $s.existingSecretKeys -}}
{{- if $cp.enabled -}}
{{- range $setting := list "databaseUrl" "keyEncryptionKey" "adminToken" -}}
{{- if not (index $keys $setting) -}}
{{- fail (printf "secrets.existingSecretKeys.%s: name the key of the existing Secret" $setting) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- if and $needRedisUrl (not $keys.redisUrl) -}}
{{- fail "secrets.existingSecretKeys.redisUrl: name the key of the existing Secret (or set redis.sentinels)" -}}
{{- end -}}
{{- else -}}
{{- if $cp.enabled -}}
{{- if not $s.databaseUrl -}}
{{- fail "secrets.databaseUrl is required (or secrets.existingSecret)" -}}
{{- end -}}
{{- if not (regexMatch "^postgres(ql)?://" $s.databaseUrl) -}}
{{- fail "secrets.databaseUrl must be a postgres:// URL" -}}
{{- end -}}
{{- if not $s.keyEncryptionKey -}}
{{- fail "secrets.keyEncryptionKey is required: 32 random bytes in base64 (openssl rand -base64 32), or secrets.existingSecret" -}}
{{- end -}}
{{- if ne (len (b64dec $s.keyEncryptionKey)) 32 -}}
{{- fail "secrets.keyEncryptionKey must be 32 bytes in base64 (openssl rand -base64 32)" -}}
{{- end -}}
{{- if lt (len $s.adminToken) 16 -}}
{{- fail "secrets.adminToken is required, at least 16 characters (or secrets.existingSecret)" -}}
{{- end -}}
{{- end -}}
{{- if and $needRedisUrl (not $s.redisUrl) -}}
{{- fail "secrets.redisUrl is required (or secrets.existingSecret, or redis.sentinels)" -}}
{{- end -}}
{{- end -}}
{{- if $cp.enabled -}}
{{- if not (regexMatch "^https?://" $cp.config.issuer) -}}
{{- fail "controlPlane.config.issuer is required: the http(s) URL tokens carry in iss" -}}
{{- end -}}
{{- $smtp := include "portcullis.secretKey" (dict "root" $ "setting" "smtpUrl") -}}
{{- if and $smtp (not $cp.config.mailFrom) -}}
{{- fail "controlPlane.config.mailFrom is required with an SMTP URL" -}}
{{- end -}}
{{- if and $cp.tls.enabled (not $cp.tls.secretName) -}}
{{- fail "controlPlane.tls.secretName: name the kubernetes.io/tls Secret" -}}
{{- end -}}
{{- end -}}
{{- if $vf.enabled -}}
{{- if not (or $vf.config.issuers $cp.config.issuer) -}}
{{- fail "verifier.config.issuers is required (it defaults to controlPlane.config.issuer, which is empty)" -}}
{{- end -}}
{{- if and $vf.tls.enabled (not $vf.tls.secretName) -}}
{{- fail "verifier.tls.secretName: name the kubernetes.io/tls Secret" -}}
{{- end -}}
{{- if and $vf.tls.clientCa.enabled (not $vf.tls.enabled) -}}
{{- fail "verifier.tls.clientCa.enabled needs verifier.tls.enabled" -}}
{{- end -}}
{{- if and $vf.policy.rules $vf.policy.existingConfigMap -}}
{{- fail "verifier.policy: set either rules or existingConfigMap, not both" -}}
{{- end -}}
{{- if and $vf.policy.rules (not (regexMatch "\\.ya?ml$" $vf.policy.key)) -}}
{{- fail "verifier.policy.key must end in .yaml or .yml: rules are rendered as YAML" -}}
{{- end -}}
{{- end -}}
{{- range $component := list "controlPlane" "verifier" -}}
{{- $c := index $v $component -}}
{{- $hpa := $c.autoscaling -}}
{{- if $hpa.enabled -}}
{{- if and (kindIs "invalid" $hpa.targetCPUUtilizationPercentage) (kindIs "invalid" $hpa.targetMemoryUtilizationPercentage) -}}
{{- fail (printf "%s.autoscaling: set targetCPUUtilizationPercentage or targetMemoryUtilizationPercentage" $component) -}}
{{- end -}}
{{- if gt (int64 $hpa.minReplicas) (int64 $hpa.maxReplicas) -}}
{{- fail (printf "%s.autoscaling: minReplicas is above maxReplicas" $component) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
