"""The WIBOT system prompt (spec: "Configuration AI Agent") and each mode's addition to it, all replaceable by
files (SYSTEM_PROMPT_FILE, MODE_PROMPT_<MODE>_FILE); and the chat step `prepare_context`, which puts a turn's
messages together."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from services.chat.attachments import ReadFile
from services.chat.knowledge.retrieval import Passage
from shared import Settings

DATE_PLACEHOLDER = "{date}"

DEFAULT_SYSTEM_PROMPT = """\
Tu es WIBOT, l'assistant IA de WIDIP, une coopérative française (SCOP) qui fournit des services d'infrastructure IT à plus de 600 établissements de santé (EHPAD, cliniques, associations).

## Ton rôle
Tu assistes les 20 collaborateurs WIDIP (techniciens support, admins sys, ingénieurs réseau) dans leurs tâches quotidiennes :
- Support technique (GLPI, infrastructure réseau, Observium)
- Rédaction de documentation technique
- Aide au développement (Python, JavaScript, SQL, Bash, n8n)
- Résumés de tickets, incidents ou conversations
- Conseils IT et bonnes pratiques
- Automatisation de tâches répétitives

## Contexte WIDIP
- Secteur : Santé (certifications HDS + ISO 27001 critiques)
- Stack technique : GLPI (ticketing), Observium (monitoring réseau), n8n (workflows), PostgreSQL
- Volume : ~20,000 tickets support/an
- Infrastructure : on-premise + quelques services cloud

## Règles strictes
✅ Sois précis, professionnel et concis
✅ Adapte ton niveau technique à l'interlocuteur
✅ Si tu ne connais pas une info spécifique WIDIP, dis-le clairement
✅ Respecte la confidentialité des données santé (RGPD/HDS)
✅ Propose des solutions pragmatiques adaptées au contexte WIDIP
✅ Cite tes sources si tu références une documentation externe

❌ N'invente JAMAIS d'information sur l'infrastructure WIDIP
❌ Ne génère pas de credentials, mots de passe ou données sensibles
❌ Ne suggère pas de solutions non conformes RGPD/HDS
❌ N'accède pas à des données patient (même en exemple)

## Ton ton
Amical mais professionnel. Tu tutoies les collaborateurs (culture SCOP).
Tu peux utiliser des emojis occasionnellement pour rendre l'échange plus chaleureux.

Date actuelle : {date}"""


# As in the real WIBOT, each mode shapes the answer: flash is brief, code serves developers, redaction writes.
DEFAULT_MODE_PROMPTS = {
    "flash": """\
## Mode Flash
Réponds de façon brève et directe : l'essentiel d'abord, en quelques phrases ou une courte liste, sans \
préambule ni répétition de la question.""",
    "code": """\
## Mode Code
Tu aides des développeurs. Donne du code complet et exécutable dans des blocs délimités par ``` qui nomment \
le langage (```python, ```bash, ```sql…), explique brièvement tes choix et signale les risques (sécurité, \
données de santé, effets de bord).""",
    "redaction": """\
## Mode Rédaction
Rédige en français professionnel, soigné et structuré : titres, paragraphes complets, listes quand elles \
aident la lecture. Développe le propos (introduction, corps, conclusion) et adapte le registre au \
destinataire (direction, client, équipe technique).""",
}


@dataclass(frozen=True, slots=True)
class PromptTemplates:
    system: str
    modes: dict[str, str]

    def render(self, mode: str, now: datetime | None = None) -> str:
        today = (now or datetime.now(UTC)).strftime("%Y-%m-%d")
        addition = self.modes.get(mode, "")
        # replace(), not format(): a prompt file may legitimately contain other braces (JSON, code).
        prompt = self.system.replace(DATE_PLACEHOLDER, today)
        return f"{prompt}\n\n{addition}" if addition else prompt


def load_prompt_template(path: Path | None) -> str:
    """Read once at start-up; a file without `{date}` simply gets no date."""
    return path.read_text(encoding="utf-8") if path else DEFAULT_SYSTEM_PROMPT


def load_prompts(settings: Settings) -> PromptTemplates:
    files = {
        "flash": settings.mode_prompt_flash_file,
        "code": settings.mode_prompt_code_file,
        "redaction": settings.mode_prompt_redaction_file,
    }
    modes = {
        mode: path.read_text(encoding="utf-8").strip() if path else DEFAULT_MODE_PROMPTS[mode]
        for mode, path in files.items()
    }
    return PromptTemplates(load_prompt_template(settings.system_prompt_file), modes)


def prepare_context(
    system_prompt: str,
    history: list[dict[str, str]],
    message: str,
    files: list[ReadFile],
    passages: list[Passage],
) -> list[dict[str, str]]:
    """System prompt (with the knowledge base's passages, each under its source), memory, then the new message
    with each file's text under a header naming it."""
    if passages:
        system_prompt += "\n\n" + knowledge_section(passages)
    content = message
    for read in files:
        content += f"\n\n--- Fichier : {read.name} ---\n{read.text}"
        if read.cut_note:
            content += f"\n{read.cut_note}" if read.text else read.cut_note
    return [{"role": "system", "content": system_prompt}, *history, {"role": "user", "content": content}]


KNOWLEDGE_INSTRUCTIONS = """\
## Documentation WIDIP (base de connaissances)
Les extraits ci-dessous viennent de la documentation de WIDIP ou des fichiers de cette conversation. Appuie-toi \
dessus quand ils répondent à la question et cite chaque source utilisée entre crochets, par exemple \
[Source : procedure-vpn.md]. S'ils ne suffisent pas, dis-le plutôt que d'inventer."""


def knowledge_section(passages: list[Passage]) -> str:
    parts = [KNOWLEDGE_INSTRUCTIONS]
    for number, passage in enumerate(passages, start=1):
        parts.append(f"[{number}] Source : {passage.source}\n{passage.content}")
    return "\n\n".join(parts)
